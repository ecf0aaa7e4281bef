"""Every YAML loads (no broken ``!ref``), and every key a script reads exists in its YAMLs."""

import json
import re
from pathlib import Path

import pytest
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from sepid.tiny import build_tiny_wavlm, save_tiny_wavlm
from sepid.training.overrides import override_args, read_overrides

ROOT = Path(__file__).resolve().parents[2]
# Not experiments: the demo's overrides of a real YAML, and tiny model sizes (tested below).
NOT_EXPERIMENTS = ("*-overrides.yaml", "tiny-*.yaml")
YAMLS = sorted(
    p
    for p in (ROOT / "hparams").rglob("*.yaml")
    if not any(p.match(pattern) for pattern in NOT_EXPERIMENTS)
)

SPEAKER_YAML = "hparams/wavlm-lora-arcface.yaml"
SEPARATION_YAML = "hparams/separation-eval.yaml"
JOINT_YAML = "hparams/sepformer-wavlm-speaker.yaml"
# Which YAML each script is run with (library code takes named arguments, not hparams).
SCRIPTS = {
    "recipes/speaker/train.py": SPEAKER_YAML,
    "recipes/speaker/evaluate.py": SPEAKER_YAML,
    "recipes/separation/evaluate.py": SEPARATION_YAML,
    "recipes/joint/train.py": JOINT_YAML,
    "recipes/joint/evaluate.py": JOINT_YAML,
}
# The variants of an experiment are overrides files of its real YAML (the demo's, the tests').
OVERRIDES = {
    "hparams/demo/speaker-overrides.yaml": SPEAKER_YAML,
    "hparams/demo/separation-overrides.yaml": SEPARATION_YAML,
    "hparams/demo/joint-overrides.yaml": JOINT_YAML,
    "tests/hparams/speaker-overrides.yaml": SPEAKER_YAML,
    "tests/hparams/separation-overrides.yaml": SEPARATION_YAML,
    "tests/hparams/joint-overrides.yaml": JOINT_YAML,
}
KEY_PATTERNS = (
    re.compile(r"hparams\[\"(\w+)\"\]"),
    re.compile(r"hparams\['(\w+)'\]"),
    re.compile(r"self\.hparams\.(\w+)"),
    re.compile(r"(?<![\w.])hparams\.(\w+)"),  # a Brain's hparams namespace handed to a helper
)


def top_level_keys(yaml_path):
    return set(re.findall(r"^(\w+):", yaml_path.read_text(), flags=re.M))


def test_there_are_yamls():
    assert len(YAMLS) >= 2


@pytest.mark.parametrize("yaml_path", YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_loads(yaml_path, tmp_path):
    keys = top_level_keys(yaml_path)
    # (configuration files such as hparams/demo/tiny-wavlm.yaml have no output folder)
    overrides = {"output_folder": str(tmp_path / "out")} if "output_folder" in keys else {}
    if "data_folder" in keys:
        overrides["data_folder"] = str(tmp_path / "data")
    if "wavlm_source" in keys:
        # No hub here: the tiny model stands in for microsoft/wavlm-base-plus.
        overrides["wavlm_source"] = str(save_tiny_wavlm(tmp_path / "tiny-wavlm"))
    if "speaker_source" in keys:
        # nothing there: a YAML only declares, the Pretrainer / the script load the model later
        overrides["speaker_source"] = str(tmp_path / "no-such-exported-model")
    with open(yaml_path) as f:
        hparams = load_hyperpyyaml(f, overrides)
    assert hparams.get("output_folder") == overrides.get("output_folder")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_key_a_script_reads_is_in_its_yamls(script):
    source = (ROOT / script).read_text()
    used = set()
    for pattern in KEY_PATTERNS:
        used |= set(pattern.findall(source))
    assert used, f"{script} reads no hparams? the pattern list needs updating"
    missing = used - top_level_keys(ROOT / SCRIPTS[script])
    assert not missing, f"{script} reads {sorted(missing)} absent from {SCRIPTS[script]}"


def test_every_overrides_file_is_listed():
    found = {
        str(p.relative_to(ROOT))
        for folder in ("hparams", "tests/hparams")
        for p in (ROOT / folder).rglob("*-overrides.yaml")
    }
    assert found == set(OVERRIDES)


@pytest.mark.parametrize("overrides", sorted(OVERRIDES))
def test_an_overrides_file_only_changes_keys_of_its_yaml(overrides):
    """An override of a key the YAML does not have would be added silently and change nothing
    (a typo, or a key renamed in the YAML): every key must be one of the real YAML's."""
    unknown = set(read_overrides(ROOT / overrides)) - top_level_keys(ROOT / OVERRIDES[overrides])
    assert not unknown, (
        f"{overrides} overrides {sorted(unknown)}, absent from {OVERRIDES[overrides]}"
    )


def test_demo_speaker_overrides_apply_to_the_real_yaml(tmp_path):
    """The demo's speaker stage is the real YAML with its overrides file, on the command line as
    the demo passes it (a tagged override such as ``!ref <prepare_folder>`` replaces the node)."""
    model = save_tiny_wavlm(tmp_path / "tiny-wavlm")
    args = override_args(
        "hparams/demo/speaker-overrides.yaml",
        [f"--wavlm_source={model}", f"--output_folder={tmp_path / 'out'}"],
    )
    _, _, overrides = sb.parse_arguments(["hparams/wavlm-lora-arcface.yaml", *args])
    with open(ROOT / "hparams/wavlm-lora-arcface.yaml") as f:
        hparams = load_hyperpyyaml(f, overrides)
    assert hparams["prepare_data"].func.__name__ == "prepare_folder"
    assert hparams["prepare_data"].keywords["trial_speakers"] is None
    assert hparams["prepare_eval_data"].func.__name__ == "prepare_folder"
    assert hparams["prepare_eval_data"].keywords["trial_speakers"] == "all"
    assert hparams["data_folder"].endswith("librispeech-mini/train-clean-100")
    assert hparams["eval_data_folder"].endswith("librispeech-mini/test-other")
    assert hparams["encoder"].freeze_backbone is False
    # every demo path is relative, inside the repository
    for key in ("data_folder", "eval_data_folder"):
        assert (ROOT / hparams[key]).resolve().is_relative_to(ROOT)


def test_the_default_speaker_prep_is_still_voxceleb(tmp_path):
    with open(ROOT / "hparams/wavlm-lora-arcface.yaml") as f:
        hparams = load_hyperpyyaml(
            f,
            {
                "data_folder": str(tmp_path),
                "output_folder": str(tmp_path / "out"),
                "wavlm_source": str(save_tiny_wavlm(tmp_path / "tiny-wavlm")),
            },
        )
    assert hparams["prepare_data"].func.__name__ == "prepare_voxceleb"
    assert hparams["prepare_eval_data"].func.__name__ == "prepare_voxceleb"


def test_demo_tiny_wavlm_sizes_build_once(tmp_path):
    folder = build_tiny_wavlm(tmp_path / "m", config=ROOT / "hparams/demo/tiny-wavlm.yaml")
    config = json.loads((folder / "config.json").read_text())
    assert config["hidden_size"] == 128 and config["num_hidden_layers"] == 3
    assert build_tiny_wavlm(folder, config=ROOT / "hparams/demo/tiny-wavlm.yaml") == folder
    other = tmp_path / "other.yaml"
    other.write_text("hidden_size: 64\n")
    with pytest.raises(FileExistsError, match="hidden_size"):
        build_tiny_wavlm(folder, config=other)


def test_no_library_function_takes_the_hparams_dict():
    """Library code takes named arguments (issue 12): a function of ``sepid/`` that took the whole
    ``hparams`` would hide which keys it needs from readers and from the key check above."""
    import ast

    takers = []
    for path in sorted((ROOT / "sepid").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if any(a.arg == "hparams" for a in args):
                    takers.append(f"{path.relative_to(ROOT)}::{node.name}")
    assert not takers, f"these take the hparams dict; pass named arguments instead: {takers}"

"""Every YAML loads (no broken ``!ref``), and every key a script reads exists in its YAMLs."""

import re
from pathlib import Path

import pytest
from hyperpyyaml import load_hyperpyyaml

from sepid.tiny import save_tiny_wavlm

ROOT = Path(__file__).resolve().parents[2]
YAMLS = sorted((ROOT / "hparams").rglob("*.yaml"))

JOINT_YAMLS = ["hparams/sepformer-wavlm-speaker.yaml", "hparams/demo/sepformer-wavlm-speaker.yaml"]
# Which YAMLs each script is run with (and the shared code those scripts hand hparams to).
SCRIPTS = {
    "recipes/speaker/train.py": [
        "hparams/wavlm-lora-arcface.yaml",
        "hparams/demo/wavlm-lora-arcface.yaml",
    ],
    "recipes/speaker/evaluate.py": [
        "hparams/wavlm-lora-arcface.yaml",
        "hparams/demo/wavlm-lora-arcface.yaml",
    ],
    "sepid/dataio.py": ["hparams/wavlm-lora-arcface.yaml", "hparams/demo/wavlm-lora-arcface.yaml"],
    "recipes/separation/evaluate.py": [
        "hparams/separation-eval.yaml",
        "hparams/demo/separation-eval.yaml",
    ],
    "sepid/separation_data.py": [
        "hparams/separation-eval.yaml",
        "hparams/demo/separation-eval.yaml",
    ],
    "recipes/joint/train.py": JOINT_YAMLS,
    "recipes/joint/evaluate.py": JOINT_YAMLS,
    "sepid/speaker_source.py": JOINT_YAMLS,
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
    overrides = {"output_folder": str(tmp_path / "out")}
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
    assert hparams["output_folder"] == str(tmp_path / "out")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_key_a_script_reads_is_in_its_yamls(script):
    source = (ROOT / script).read_text()
    used = set()
    for pattern in KEY_PATTERNS:
        used |= set(pattern.findall(source))
    assert used, f"{script} reads no hparams? the pattern list needs updating"
    for yaml_name in SCRIPTS[script]:
        missing = used - top_level_keys(ROOT / yaml_name)
        assert not missing, f"{script} reads {sorted(missing)} absent from {yaml_name}"

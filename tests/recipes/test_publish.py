"""Publishing a model others can trust (issue 20; issue 22 items 3, 4, 9): truthful model cards
rendered from the session's tiny runs, nothing machine-specific in an export, the push-only
route (idempotent, retried after a failed commit), bounded timeouts against a server that never
answers, private repos and revisions loaded through ``FetchConfig(token=True, revision=...)``,
the joint model's verification threshold, and a full disk during export."""

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import speechbrain as sb
import torch
from huggingface_hub import ModelCard
from hyperpyyaml import resolve_references
from speechbrain.inference.interfaces import foreign_class

from pretrained_interfaces.cards import speaker_training_text
from pretrained_interfaces.export import REPOSITORY, export_joint, export_speaker, main
from pretrained_interfaces.runs import _top_level, _value, speaker_source_threshold
from tests.helpers import CORPUS, ROOT, held_out_test_mixtures, run_python, run_script
from tests.hub_server import HubServer, SilentServer, listing

TOKEN = "hf_publish_secret_0123456789"
WAV = CORPUS / "2033" / "2033-164914-0002.flac"
SPEAKER_THRESHOLD = 0.4242  # stored in the joint run's speaker source (a copy of the export)


def export_script(*args, env=None, timeout=600):
    """``python pretrained_interfaces/export.py *args`` from the repository root: for what needs
    a process of its own (the Hub endpoint read at import, a traceback on stderr, the exit code);
    the options alone are checked through ``main`` in this process (no second interpreter)."""
    return run_python(
        ["pretrained_interfaces/export.py", *args],
        env={**os.environ, **env} if env else None,
        timeout=timeout,
    )


# ---------------------------------------------------------------------- fixtures ---
@pytest.fixture(scope="module")
def speaker_run(speaker_evaluated):
    """The session's speaker experiment, evaluated (eval/metrics.json); shared with other files,
    so read here, never written."""
    return speaker_evaluated


@pytest.fixture(scope="module")
def speaker_export(speaker_run, tmp_path_factory):
    return export_speaker(
        run_folder=speaker_run,
        out=tmp_path_factory.mktemp("publish") / "spk",
        repo_id="me/tiny-wavlm-spk",
        license="cc-by-4.0",
        datasets=["openslr/librispeech_asr"],
    )


@pytest.fixture(scope="module")
def joint_evaluated(
    joint_run, joint_recipe, speaker_experiment, exported_speaker, tmp_path_factory
):
    """A copy of the session's joint run, evaluated by recipes/joint/evaluate.py on 3 held-out
    mixtures, its speaker source a copy of the session's export with a stored threshold."""
    run, _ = joint_run
    base = tmp_path_factory.mktemp("publish-joint")
    source = base / "speaker-source"
    shutil.copytree(exported_speaker, source)
    yaml_file = source / "hyperparams.yaml"
    text = re.sub(
        r"^threshold: .*$",
        f"threshold: {SPEAKER_THRESHOLD}",
        yaml_file.read_text(),
        count=1,
        flags=re.M,
    )
    yaml_file.write_text(text)
    out = base / "joint-run"
    shutil.copytree(run, out)
    mixtures = held_out_test_mixtures(speaker_experiment, base / "mix", 3, sample_rate=8000)
    run_script(
        joint_recipe.command(
            "recipes/joint/evaluate.py",
            f"--output_folder={out}",
            f"--speaker_source={source}",
            f"--speaker_manifest={Path(speaker_experiment) / 'prep' / 'train.csv'}",
            "--number_of_epochs=1",
            "--n_train_mixtures=4",
            "--n_valid_mixtures=2",
            f"--mixture_folder={mixtures}",
            f"--enrol_csv={Path(speaker_experiment) / 'prep' / 'iden_enrol.csv'}",
            f"--enrol_data_folder={CORPUS}",
        )
    )
    return out


@pytest.fixture(scope="module")
def joint_export(joint_evaluated):
    return export_joint(run_folder=joint_evaluated, out=joint_evaluated.parent / "joint")


def card_of(folder):
    text = (Path(folder) / "README.md").read_text(encoding="utf-8")
    return text, ModelCard(text)  # parses: valid front matter


def command_reproduces_run(card, run, script, fill):
    """The card's training command, placeholders filled with ``fill``, gives SpeechBrain's
    resolved YAML of the run: every top-level key equal to the run's hyperparams.yaml."""
    command = re.search(rf"```bash\n(python {script} .*?)\n```", card, re.S).group(1)
    assert "/" + "tmp" not in command and str(REPOSITORY) not in command
    args = shlex.split(command)  # the shell's reading of it
    assert args[:2] == ["python", script] and not Path(args[2]).is_absolute()
    for placeholder, value in fill.items():
        assert placeholder in command
        args = [a.replace(placeholder, str(value)) for a in args]
    assert not [a for a in args if "<" in a.replace("!ref <", "")], args
    _, _, overrides = sb.parse_arguments(args[2:])
    resolved = resolve_references((ROOT / args[2]).read_text(), overrides).getvalue()
    got, want = _top_level(resolved), _top_level((Path(run) / "hyperparams.yaml").read_text())
    assert sorted(got) == sorted(want)

    def norm(value):  # a path given relative to the repository names the same folder
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            return [norm(v) for v in value]
        if isinstance(value, str) and value and Path(ROOT / value).exists():
            return str(Path(ROOT / value).resolve())
        return value

    differ = [k for k in want if norm(_value(got[k])) != norm(_value(want[k]))]
    assert not differ, differ
    return command


# ------------------------------------------------------------------ model cards ---
def test_speaker_card_says_what_the_model_is(speaker_run, speaker_export, tiny_wavlm):
    card, parsed = card_of(speaker_export)
    data = parsed.data
    metrics = json.loads((speaker_run / "eval" / "metrics.json").read_text())["models"]
    # title and metadata
    assert card.split("---", 2)[2].lstrip().startswith("# me/tiny-wavlm-spk\n")
    assert data.license == "cc-by-4.0" and data.datasets == ["openslr/librispeech_asr"]
    assert data.library_name == "speechbrain" and data.base_model is None  # not a Hub model
    # random initialisation said, LoRA only as trained (rank 8 here)
    assert "tiny randomly initialised WavLM" in card and "random-init" in data.tags
    assert "**The base model was randomly initialised**" in card
    assert "LoRA rank 8" in card and "lora" in data.tags
    # every metric with its set's name and size, one unit convention
    ft = metrics["finetuned"]
    cosine = ft["verification"]["cosine"]
    trials = cosine["n_target"] + cosine["n_nontarget"]
    assert f"50 utterances of 5 speakers, {trials} trials ({cosine['n_target']} target)" in card
    assert "10 test utterances of 5 speakers" in card
    rows = [line for line in card.splitlines() if line.startswith("| this model |")]
    assert any(f"| {round(100 * cosine['eer'], 2)} |" in r for r in rows)
    top1 = ft["identification_eval_speakers"]["embedding"]["top1"]
    assert any(f"| {round(100 * top1, 2)} |" in r for r in rows)  # in %, as EER
    assert "EER, TAR, accuracies and STOI in %" in card
    n_pretrained = sum(len(v) for v in metrics["pretrained"].values())
    assert len([r for r in card.splitlines() if r.startswith("| base model")]) == n_pretrained
    # model-index the Hub shows: every fine-tuned metric, EER in %
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in data.eval_results}
    assert round(100 * cosine["eer"], 4) in results.values()
    assert any("356 trials" in name or f"{trials} trials" in name for name, _ in results)
    # install line: the exact versions of the interface's packages
    pins = [
        f"{p}=={version(p).split('+')[0]}"
        for p in ("torch", "torchaudio", "speechbrain", "transformers")
    ]
    assert "pip install " + " ".join(pins) in card
    # licence of the training data
    assert "CC BY 4.0 (LibriSpeech" in card
    # the training command runs from the repository root as printed
    command_reproduces_run(
        card,
        speaker_run,
        "recipes/speaker/train.py",
        {
            "<output_folder>": speaker_run,
            "<data_folder>": "tests/samples/librispeech-mini/test-other",
            "<eval_data_folder>": "tests/samples/librispeech-mini/test-other",
            "<wavlm_source>": tiny_wavlm,
        },
    )
    assert 'source="me/tiny-wavlm-spk"' in card


def test_title_option_and_training_modes(speaker_run, tmp_path):
    argv = [str(speaker_run), "--out", str(tmp_path / "x"), "--title", "My speaker model"]
    assert main([*argv, "--license", "mit", "--dataset", "a/b", "--dataset", "c/d"]) == 0
    card, parsed = card_of(tmp_path / "x")
    assert "\n# My speaker model\n" in card and parsed.data.license == "mit"
    assert parsed.data.datasets == ["a/b", "c/d"]
    assert 'source="x"' in card  # the folder, as run from its parent: no absolute path
    # LoRA named only when its rank is positive; otherwise what was really trained
    base = {"lora_alpha": 16, "lora_targets": ["q_proj"]}
    assert "no LoRA" in speaker_training_text({**base, "lora_rank": 0, "freeze_backbone": True})
    full = speaker_training_text({**base, "lora_rank": 0, "freeze_backbone": False})
    assert full.startswith("whole model fine-tuned") and "LoRA" not in full
    assert "LoRA rank 4" in speaker_training_text({**base, "lora_rank": 4})


def test_joint_card_reports_every_metric(
    joint_evaluated, joint_export, tiny_sepformer, tiny_wavlm, speaker_experiment
):
    card, parsed = card_of(joint_export)
    data = parsed.data
    metrics = json.loads((joint_evaluated / "eval" / "metrics.json").read_text())["systems"]
    assert set(metrics) == {"pretrained separator", "joint model"}
    assert data.datasets == ["openslr/librispeech_asr"] and "random-init" in data.tags
    assert "`<mixture_folder>`/test.csv (3 two-speaker mixtures at 8000 Hz)" in card or (
        "<mixture_folder>/test.csv (3 two-speaker mixtures at 8000 Hz)" in card
    )
    lines = card.splitlines()
    header = next(line for line in lines if line.startswith("| system | SI-SDRi dB"))
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    keys = {
        "SI-SDRi dB": "si_sdri",
        "SI-SDR dB": "si_sdr",
        "SDRi dB": "sdri",
        "SDR dB": "sdr",
        "SIR dB": "sir",
        "SAR dB": "sar",
        "PESQ": "pesq",
        "STOI %": "stoi",
    }
    summaries = {
        "unprocessed mixture": metrics["pretrained separator"]["mixture"],
        "pretrained separator (baseline)": metrics["pretrained separator"]["separation"],
        "this model (joint)": metrics["joint model"]["separation"],
    }
    assert set(columns) == {
        label for label, k in keys.items() if k in summaries["this model (joint)"]
    }
    for name, summary in summaries.items():
        row = next(line for line in lines if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        for label, cell in zip(columns, cells, strict=True):
            mean = summary[keys[label]]["mean"]
            scale = 100 if label == "STOI %" else 1
            assert cell == ("" if mean is None else f"{mean * scale:.2f}"), (name, label)
    n_identification = 0
    for system, report in metrics.items():
        for model, conditions in report["speaker_identification"].items():
            for condition, methods in conditions.items():
                for method, acc in methods.items():
                    n_identification += 1
                    value = "" if acc["accuracy"] is None else f"{100 * acc['accuracy']:.2f}"
                    assert any(
                        line.startswith(f"| {system} | {model}")
                        and f"| {method} | {value} | {acc['n']} |" in line
                        for line in lines
                    ), (system, model, condition, method)
    assert n_identification >= 4
    assert any(r.metric_name.startswith("speaker accuracy") for r in data.eval_results)
    assert any(r.metric_type == "si_sdri" for r in data.eval_results)
    command_reproduces_run(
        card,
        joint_evaluated,
        "recipes/joint/train.py",
        {
            "<output_folder>": joint_evaluated,
            "<data_folder>": "tests/samples/librispeech-mini/test-other",
            "<speaker_source>": joint_evaluated.parent / "speaker-source",
            "<speaker_manifest>": Path(speaker_experiment) / "prep" / "train.csv",
            "<separator_source>": tiny_sepformer,
            "<wavlm_source>": tiny_wavlm,
            "<mixture_folder>": joint_evaluated.parent / "mix",
            "<enrol_csv>": Path(speaker_experiment) / "prep" / "iden_enrol.csv",
        },
    )


# ------------------------------------------------- nothing machine-specific (22.3) ---
def test_exports_hold_no_absolute_path(
    speaker_export, joint_export, speaker_run, tmp_path, tmp_path_factory
):
    adapters = export_speaker(run_folder=speaker_run, out=tmp_path / "adapters", adapters=True)
    base_temp = str(tmp_path_factory.getbasetemp())
    needles = {base_temp, str(REPOSITORY), str(Path.home())}
    assert str(speaker_run).startswith(base_temp)
    for folder in (speaker_export, joint_export, adapters):
        for path in sorted(Path(folder).iterdir()):
            data = path.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, f"{needle} in {path}"
    yaml_text = (adapters / "hyperparams.yaml").read_text()
    assert 'base_weights: "<wavlm_source>/model.safetensors"' in yaml_text
    # loads where the base model is, with the override the card and the log name
    base = Path(
        re.search(
            r"^wavlm_source: (\S+)", (speaker_run / "hyperparams.yaml").read_text(), re.M
        ).group(1)
    )
    model = foreign_class(
        source=str(adapters),
        pymodule_file="custom_interface.py",
        classname="WavLMSpeakerInterface",
        overrides={"base_weights": str(base / "model.safetensors")},
    )
    merged = foreign_class(
        source=str(speaker_export),
        pymodule_file="custom_interface.py",
        classname="WavLMSpeakerInterface",
    )
    torch.testing.assert_close(model.encode_file(WAV), merged.encode_file(WAV), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------- push ---
def test_push_only_is_idempotent_and_retries_after_a_failed_commit(speaker_export, tmp_path):
    before = listing(speaker_export)
    command = ("--push-only", speaker_export, "--repo", "user/spk")
    with HubServer(token=TOKEN) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf")}
        hub.fail_commits = 1  # the repo is created, then the commit fails
        failed = export_script(*command, env=env)
        assert failed.returncode == 1
        assert "Could not push" in failed.stderr and "intact" in failed.stderr
        assert f"--push-only {speaker_export} --repo user/spk" in failed.stderr  # the retry
        assert "user/spk" in hub.repos and hub.repos["user/spk"]["main"] == {}
        for _ in range(2):  # the same command again succeeds, and again (idempotent)
            done = export_script(*command, env=env)
            assert done.returncode == 0, done.stderr[-2000:]
            files = hub.repos["user/spk"]["main"]
            got = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
            assert got.keys() == before.keys()
            assert {k: v for k, v in got.items() if k != "README.md"} == {
                k: v for k, v in before.items() if k != "README.md"
            }
        card = files["README.md"].decode()
        assert 'source="user/spk"' in card and 'source="me/tiny-wavlm-spk"' not in card
        local = (speaker_export / "README.md").read_text()
        assert card == local.replace('source="me/tiny-wavlm-spk"', 'source="user/spk"')
    for text in (failed.stdout, failed.stderr, done.stdout, done.stderr):
        assert TOKEN not in text
    assert listing(speaker_export) == before  # the folder itself unchanged


def test_push_to_a_server_that_never_answers_fails_in_bounded_time(speaker_export, tmp_path):
    with SilentServer() as silent:
        start = time.monotonic()
        proc = export_script(
            "--push-only",
            speaker_export,
            "--repo",
            "user/spk",
            "--timeout",
            "1",
            env={"HF_ENDPOINT": silent.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path)},
            timeout=300,
        )
        elapsed = time.monotonic() - start
        assert silent.accepted >= 1  # it did connect, and got no answer
    assert proc.returncode == 1
    assert "Could not push" in proc.stderr and "Timeout" in proc.stderr
    assert "intact" in proc.stderr and TOKEN not in proc.stderr
    assert elapsed < 120, elapsed  # 1 s per request, huggingface_hub's few retries, start-up


def test_private_repo_and_revision_load_with_fetch_config(speaker_export, tmp_path):
    with HubServer(token=TOKEN) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf")}
        push = export_script(
            "--push-only",
            speaker_export,
            "--repo",
            "user/private-spk",
            "--private",
            "--revision",
            "v1",
            env=env,
        )
        assert push.returncode == 0, push.stderr[-2000:]
        assert "user/private-spk" in hub.private and "v1" in hub.repos["user/private-spk"]
        code = (
            "import sys, torch\n"
            "from speechbrain.inference.interfaces import foreign_class\n"
            "from speechbrain.utils.fetching import FetchConfig\n"
            "spk = foreign_class(source='user/private-spk', pymodule_file='custom_interface.py',\n"
            "    classname='WavLMSpeakerInterface', savedir=sys.argv[1],\n"
            "    fetch_config=FetchConfig(token=True, revision='v1'))\n"
            "torch.save(spk.encode_file(sys.argv[2]), sys.argv[3])\n"
        )
        emb = tmp_path / "emb.pt"
        # without the token (SpeechBrain's default fetch): refused
        refused = hub.load(
            code.replace("token=True, ", ""),
            str(tmp_path / "hf-a"),
            tmp_path / "a",
            WAV,
            emb,
            token=True,
            check=False,
        )
        assert refused.returncode != 0 and "401" in refused.stderr
        loaded = hub.load(code, str(tmp_path / "hf-b"), tmp_path / "b", WAV, emb, token=True)
        reads = [h for m, p, h in hub.requests if m in ("GET", "HEAD") and "/resolve/v1/" in p]
        assert reads and all(h.get("authorization") == f"Bearer {TOKEN}" for h in reads[-3:])
    assert TOKEN not in loaded.stdout + loaded.stderr
    expected = foreign_class(
        source=str(speaker_export),
        pymodule_file="custom_interface.py",
        classname="WavLMSpeakerInterface",
    ).encode_file(WAV)
    torch.testing.assert_close(torch.load(emb), expected, atol=0, rtol=0)


# ------------------------------------------------- joint verification threshold ---
def test_joint_export_carries_the_speaker_sources_threshold(
    joint_export, joint_evaluated, exported_speaker, tmp_path
):
    yaml_text = (joint_export / "hyperparams.yaml").read_text()
    assert re.search(r"^threshold: (\S+)", yaml_text, re.M).group(1) == str(SPEAKER_THRESHOLD)
    card, _ = card_of(joint_export)
    assert f"threshold {SPEAKER_THRESHOLD:.6f}" in card and "speaker source" in card
    model = foreign_class(
        source=str(joint_export),
        pymodule_file="custom_interface.py",
        classname="SepformerSpeakerInterface",
    )
    score, same = model.verify_files(WAV, WAV)  # no threshold argument needed
    assert same == (score > SPEAKER_THRESHOLD)
    # --threshold wins; a speaker source without one leaves none, and the card says so
    assert main([str(joint_evaluated), "--out", str(tmp_path / "j"), "--threshold", "0.3"]) == 0
    assert re.search(r"^threshold: 0.3$", (tmp_path / "j" / "hyperparams.yaml").read_text(), re.M)
    assert speaker_source_threshold(exported_speaker)[0] is None
    assert speaker_source_threshold(joint_evaluated.parent / "speaker-source")[0] == (
        SPEAKER_THRESHOLD
    )


def test_joint_export_without_threshold_says_verification_needs_one(joint_run, tmp_path):
    run, _ = joint_run  # its speaker source was exported without an evaluation
    out = export_joint(run_folder=run, out=tmp_path / "joint")
    assert re.search(r"^threshold: null", (out / "hyperparams.yaml").read_text(), re.M)
    card, _ = card_of(out)
    assert "`sep.verify_files(a, b)` needs `threshold=...`" in card


# ------------------------------------------------------------- disk full (22.9) ---
def test_disk_full_during_export_is_one_clear_error(speaker_run, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mount.stderr.strip()})")
    try:
        proc = export_script(speaker_run, "--out", small / "spk")
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert f"No space left on the device of {small}" in proc.stderr
        assert "Traceback" not in proc.stderr and not list(small.iterdir())
    finally:
        subprocess.run(["umount", str(small)], check=True)

"""End to end: the real train.py and evaluate.py on the shipped LibriSpeech sample with a tiny
random WavLM (saved to a folder and loaded with from_pretrained), as a user runs them."""

import csv
import json
import re
from pathlib import Path

import pytest

from tests.helpers import run_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(speaker_recipe):
    """Runs a speaker script with the tests' setting into ``output_folder``."""

    def run(script, output_folder, *extra):
        command = speaker_recipe.command(script, f"--output_folder={output_folder}", *extra)
        return run_script(command)

    return run


def train_losses(log_file):
    return [float(x) for x in re.findall(r"train loss: ([0-9.e+-]+)", log_file.read_text())]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run):
    out = tmp_path_factory.mktemp("speaker")
    # Margin 0 throughout (the schedule's hold phase) so the loss is comparable across epochs.
    log = run("recipes/speaker/train.py", out, "--number_of_epochs=2", "--margin_hold_steps=1000")
    return out, log


def test_train_writes_manifests_checkpoints_and_log(trained):
    out, log = trained
    for name in ("train.csv", "valid.csv", "iden_enrol.csv", "iden_test.csv", "prep_options.json"):
        assert (out / "prep" / name).is_file(), name
    with open(out / "prep" / "train.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["spk_id"] for r in rows} == {"1688", "1998", "2033", "2414", "2609"}
    assert all(r["wav"].startswith("$data_root/") for r in rows)
    ckpts = sorted((out / "save").glob("CKPT+*"))
    assert ckpts, "no checkpoint written"
    for name in ("encoder.ckpt", "classifier.ckpt", "counter.ckpt", "brain.ckpt"):
        assert (ckpts[-1] / name).is_file(), name
    assert (out / "save" / "label_encoder.txt").is_file()
    assert re.search(r"Trainable parameters: \d+ of \d+", log)


def test_training_loss_goes_down(trained):
    out, _ = trained
    losses = train_losses(out / "train_log.txt")
    assert len(losses) == 2
    assert losses[1] < losses[0], losses


def test_rerun_resumes_from_checkpoint(trained, run):
    out, _ = trained
    log = run("recipes/speaker/train.py", out, "--number_of_epochs=3", "--margin_hold_steps=1000")
    assert "Going into epoch 3" in log
    assert "Going into epoch 1" not in log and "Going into epoch 2" not in log
    assert len(train_losses(out / "train_log.txt")) == 3


def test_evaluate_pretrained_and_finetuned_on_unseen_speakers(trained, run):
    out, _ = trained
    # AS-norm with the training utterances as cohort (speakers disjoint from the trials)
    cohort = f"--cohort_csv={out / 'prep' / 'train.csv'}"
    log = run("recipes/speaker/evaluate.py", out, cohort)
    ev = out / "eval"
    result = json.loads((ev / "metrics.json").read_text())
    assert "evaluate.py" in result["command"]
    assert set(result["models"]) == {"pretrained", "finetuned"}
    for model in ("pretrained", "finetuned"):
        report = result["models"][model]
        veri = report["verification"]["cosine"]
        assert 0.0 <= veri["eer"] <= 1.0 and veri["n_target"] == veri["n_nontarget"] > 0
        assert report["verification"]["asnorm"]["n_target"] == veri["n_target"]
        assert "min_dcf@0.01" in veri and "tar@far=0.01" in veri
        assert report["identification_eval_speakers"]["embedding"]["n_speakers"] == 5
        assert (ev / f"det_verification_{model}_cosine.png").stat().st_size > 0
    assert "classifier" in result["models"]["finetuned"]["identification_train_speakers"]
    with open(ev / "scores_verification.csv") as f:
        rows = list(csv.DictReader(f))
    n_trials = veri["n_target"] + veri["n_nontarget"]
    assert len(rows) == n_trials
    assert {"pretrained_cosine", "finetuned_cosine", "finetuned_asnorm"} <= set(rows[0])
    # Evaluation speakers are disjoint from the training ones.
    with open(out / "prep_eval" / "veri_utts.csv") as f:
        assert not {r["spk_id"] for r in csv.DictReader(f)} & {
            "1688",
            "1998",
            "2033",
            "2414",
            "2609",
        }
    first = re.findall(r"(\d+) utterances, 0 cached, (\d+) to embed", log)
    assert len(first) == 2 and all(a == b for a, b in first), first

    # A rerun embeds nothing again: the cache is keyed by model.
    log = run("recipes/speaker/evaluate.py", out, cohort)
    again = re.findall(r"(\d+) utterances, (\d+) cached, 0 to embed", log)
    assert len(again) == 2 and all(a == b for a, b in again), again

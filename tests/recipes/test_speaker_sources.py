"""``recipes/speaker/evaluate.py`` on other speaker sources: the exported folder of a trained run
(loaded through its ``custom_interface.py``, as users load it) gives the scores of the run's own
checkpoint, and a stock SpeechBrain ``EncoderClassifier`` (a tiny ECAPA-TDNN saved in the layout
of ``speechbrain/spkrec-ecapa-voxceleb``) is scored beside it on the same trials and tables."""

import csv
import json
import shutil

import pytest

from pretrained_interfaces.export import export_speaker
from sepid.tiny import save_tiny_ecapa
from tests.helpers import run_script

# |exported - checkpoint| cosine score: merged LoRA vs W + BA at every forward, float32 (the
# embeddings agree to 1e-5, see test_speaker_interface.py)
SCORE_ATOL = 1e-4


@pytest.fixture(scope="module")
def evaluated(speaker_evaluated, speaker_recipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    # the run's checkpoint evaluated (run/eval): the session's evaluation, exported from there
    # (its YAML names that folder), then copied here, as the second evaluation writes into it
    exported = export_speaker(run_folder=speaker_evaluated, out=root / "exported")
    run = root / "run"
    shutil.copytree(speaker_evaluated, run)
    evaluate = "recipes/speaker/evaluate.py"
    ecapa = save_tiny_ecapa(root / "tiny-ecapa")
    log = run_script(
        speaker_recipe.command(
            evaluate,
            f"--output_folder={run}",
            f"--eval_folder={run / 'eval_sources'}",
            f"--speaker_source={exported}",
            f"--baseline_source={ecapa}",
        )
    )
    return run, log


def scores(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_exported_model_scores_as_its_checkpoint(evaluated):
    run, _ = evaluated
    own = scores(run / "eval" / "scores_verification.csv")
    other = scores(run / "eval_sources" / "scores_verification.csv")
    assert [(r["enrol"], r["test"]) for r in own] == [(r["enrol"], r["test"]) for r in other]
    for a, b in zip(own, other, strict=True):
        assert abs(float(a["finetuned_cosine"]) - float(b["exported_cosine"])) < SCORE_ATOL
        assert a["pretrained_cosine"] == b["pretrained_cosine"]
    mine = json.loads((run / "eval" / "metrics.json").read_text())["models"]["finetuned"]
    theirs = json.loads((run / "eval_sources" / "metrics.json").read_text())["models"]
    assert set(theirs) == {"pretrained", "exported", "baseline"}
    for key in ("identification_eval_speakers", "identification_train_speakers"):
        assert theirs["exported"][key]["embedding"] == pytest.approx(mine[key]["embedding"])
    # the exported head and label encoder give the checkpoint's closed-set accuracy
    assert theirs["exported"]["identification_train_speakers"]["classifier"] == pytest.approx(
        mine["identification_train_speakers"]["classifier"]
    )


def test_baseline_is_scored_on_the_same_trials_and_tables(evaluated):
    run, log = evaluated
    result = json.loads((run / "eval_sources" / "metrics.json").read_text())
    baseline = result["models"]["baseline"]
    exported = result["models"]["exported"]
    assert set(baseline) == set(exported)
    veri = baseline["verification"]["cosine"]
    assert 0.0 <= veri["eer"] <= 1.0
    assert veri["n_target"] == exported["verification"]["cosine"]["n_target"] > 0
    # the ECAPA's head knows none of these speakers: no classifier accuracy for it
    assert "classifier" not in baseline["identification_train_speakers"]
    table = (run / "eval_sources" / "results.md").read_text()
    assert table.splitlines()[0] == "| metric | pretrained | exported | baseline |"
    assert "baseline_cosine" in scores(run / "eval_sources" / "scores_verification.csv")[0]
    assert "Evaluating the baseline" in log and "EncoderClassifier" in log
    # nothing is written outside the run's folder: the pretrained files go under it
    assert (run / "pretrained_models" / "baseline" / "hyperparams.yaml").exists()

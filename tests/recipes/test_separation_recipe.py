"""End to end: make_mixtures + the real recipes/separation/evaluate.py with a tiny random SepFormer
(saved with its hyperparams.yaml and loaded through from_hparams) and a tiny speaker model trained
by the real speaker recipe, exported and loaded as users load it (foreign_class)."""

import csv
import json

import pytest

from tests.helpers import CORPUS, held_out_test_mixtures, run_script


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, speaker_experiment, exported_speaker, separation_recipe):
    work = tmp_path_factory.mktemp("separation")
    speaker = speaker_experiment
    # Held-out utterances of the speaker model's training speakers, at the corpus's 16 kHz: the
    # 8 kHz separator gets resampled input.
    mixtures = work / "mix"
    held_out_test_mixtures(speaker, mixtures, 4)
    out = work / "eval"
    log = run_script(
        separation_recipe.command(
            "recipes/separation/evaluate.py",
            f"--output_folder={out}",
            f"--data_folder={mixtures}",
            f"--speaker_source={exported_speaker}",
            f"--enrol_csv={speaker / 'prep' / 'iden_enrol.csv'}",
            f"--enrol_data_folder={CORPUS}",
        )
    )
    return out / "eval", log


def test_outputs_and_metrics(evaluated):
    ev, log = evaluated
    assert "Mixtures are at 16000 Hz" in log and "every separation metric is at 8000 Hz" in log
    result = json.loads((ev / "metrics.json").read_text())
    assert result["sample_rate"] == 8000 and result["n_mixtures"] == 4
    for key in ("si_sdr", "si_sdri", "sdr", "sir", "sar", "pesq", "stoi"):
        assert result["separation"][key]["n"] + result["separation"][key]["n_missing"] == 4
    # the unprocessed mixture improves on itself by exactly nothing
    assert abs(result["mixture"]["si_sdri"]["mean"]) < 1e-6
    with open(ev / "per_mixture.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and rows[-1]["ID"] == "mean"
    assert (ev / "si_sdri_hist.png").stat().st_size > 0
    assert "Separation metrics at 8000 Hz" in (ev / "results.md").read_text()


def test_speaker_identification_on_outputs_and_bounds(evaluated):
    ev, _ = evaluated
    spk = json.loads((ev / "metrics.json").read_text())["speaker_identification"]
    assert set(spk) == {"finetuned"}  # the exported model, by its speaker_tag
    for condition in ("separated", "clean", "mixture"):
        assert spk["finetuned"][condition]["embedding"]["n"] == 8  # two outputs per mixture
        assert "classifier" in spk["finetuned"][condition]
    # the raw mixture stands for both outputs: it can name at most one speaker of the two
    assert spk["finetuned"]["mixture"]["embedding"]["accuracy"] <= 0.5

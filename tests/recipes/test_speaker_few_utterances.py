"""The speaker recipe on speakers with one utterance each, with the whole WavLM fine-tuned
(``--freeze_backbone=False``): validation on held-out segments, a checkpoint that holds the
trained backbone (and exports), an evaluation that skips the set it cannot build."""

import json
import re
import shutil

import pytest
import soundfile as sf
import torch

from pretrained_interfaces.export import export_speaker, load_run
from sepid.data.manifest import read_csv
from tests.helpers import CORPUS, run_script

TRAIN_SPEAKERS = ["1688", "1998", "2033", "2414", "2609"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, speaker_recipe):
    """One utterance (each speaker's longest) per training speaker, in a flat folder."""
    root = tmp_path_factory.mktemp("few")
    flat = root / "flat"
    flat.mkdir()
    for spk in TRAIN_SPEAKERS:
        longest = max((CORPUS / spk).glob("*.flac"), key=lambda f: sf.info(f).frames)
        shutil.copy(longest, flat / longest.name)
    out = root / "run"
    common = [
        f"--output_folder={out}",
        f"--data_folder={flat}",
        f"--eval_data_folder={CORPUS}",
        "--freeze_backbone=False",
    ]
    train = "recipes/speaker/train.py"
    log = run_script(
        speaker_recipe.command(train, *common, "--number_of_epochs=1", "--batch_size=4")
    )
    eval_log = run_script(speaker_recipe.command("recipes/speaker/evaluate.py", *common))
    return out, log, eval_log


def test_validation_on_held_out_segments(run):
    out, log, _ = run
    valid = read_csv(out / "prep" / "valid.csv")
    train = {r["ID"]: r for r in read_csv(out / "prep" / "train.csv")}
    assert sorted(r["spk_id"] for r in valid) == TRAIN_SPEAKERS
    for row in valid:
        utt_id, cut = row["ID"].split("@")
        assert float(train[utt_id]["stop"]) == float(row["start"]) == float(cut)
    assert re.search(r"valid loss: [0-9.]+", (out / "train_log.txt").read_text())


def test_parameter_log_and_checkpoint_hold_the_fine_tuned_backbone(run):
    out, log, _ = run
    assert "backbone fine-tuned" in log and "backbone is frozen" not in log
    ckpt = sorted((out / "save").glob("CKPT+*"))[-1] / "encoder.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["freeze_backbone"] is False
    assert any(k.startswith("backbone.encoder.layers.0.feed_forward") for k in saved["state"])
    # the rebuilt model carries the trained backbone, not the base model's weights
    hparams, _, _ = load_run(out)
    loaded = hparams["encoder"].state_dict()
    for key, value in saved["state"].items():
        torch.testing.assert_close(loaded[key], value)


def test_evaluation_skips_the_empty_identification_set(run):
    out, _, eval_log = run
    assert "Skipping the 'train_speakers' evaluation set: no test utterance" in eval_log
    result = json.loads((out / "eval" / "metrics.json").read_text())
    for model in ("pretrained", "finetuned"):
        report = result["models"][model]
        assert "identification_train_speakers" not in report
        assert report["verification"]["cosine"]["n_target"] > 0
        assert report["identification_eval_speakers"]["embedding"]["n_speakers"] == 5


def test_fine_tuned_backbone_exports_merged(run, tmp_path):
    out, _, _ = run
    # export_speaker checks the exported model's embeddings against the checkpoint's itself
    folder = export_speaker(run_folder=out, out=tmp_path / "exported")
    assert (folder / "embedder.ckpt").is_file()


def test_fine_tuned_backbone_refuses_an_adapters_export(run, tmp_path):
    out, _, _ = run
    with pytest.raises(ValueError, match="fine-tuned its WavLM backbone"):
        export_speaker(run_folder=out, out=tmp_path / "adapters", adapters=True)
    assert not (tmp_path / "adapters").exists() and not list(tmp_path.glob(".adapters*"))
    card = (export_speaker(run_folder=out, out=tmp_path / "merged") / "README.md").read_text()
    assert "with a fine-tuned WavLM" in card

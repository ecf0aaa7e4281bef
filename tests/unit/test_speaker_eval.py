"""Evaluation sets built from manifests: one embedding per distinct utterance, clear errors."""

import logging

import pytest
import torch

from sepid.data.manifest import write_csv
from sepid.report.tables import speaker_results_table
from sepid.speaker.evaluation import (
    IdentificationSet,
    VerificationSet,
    compare_models,
    drop_empty_sets,
    identification_report,
    trial_bootstrap,
    unique_utterances,
    verification_report,
)
from sepid.speaker.scoring import EmbeddingTable

UTT = ["ID", "duration", "wav", "spk_id"]


def utt(i, spk, dur=2.0):
    return {"ID": f"u{i}", "duration": dur, "wav": f"$data_root/{spk}/u{i}.wav", "spk_id": spk}


@pytest.fixture
def prep(tmp_path):
    utts = [utt(0, "a"), utt(1, "a", 5.0), utt(2, "b"), utt(3, "b", 3.0)]
    write_csv(tmp_path / "veri_utts.csv", utts, UTT)
    trials = [
        {"label": 1, "enrol": "u0", "test": "u1"},
        {"label": 0, "enrol": "u0", "test": "u2"},
        {"label": 1, "enrol": "u2", "test": "u3"},
    ]
    write_csv(tmp_path / "veri_trials.csv", trials, ["label", "enrol", "test"])
    write_csv(tmp_path / "iden_enrol.csv", [utts[0], utts[2]], UTT)
    write_csv(tmp_path / "iden_test.csv", [utts[1], utts[3]], UTT)
    return tmp_path


def test_each_utterance_once_across_sets(prep):
    vset = VerificationSet.from_prep("v", prep, "/data")
    iset = IdentificationSet.from_prep("i", prep, "/data")
    assert vset.trials[0] == (1, "u0", "u1")
    assert vset.paths["u0"] == "/data/a/u0.wav"
    dataset = unique_utterances([vset.rows, iset.enrol + iset.test])
    assert sorted(dataset.data_ids) == sorted(vset.paths.values())
    # longest first, so batches hold similar lengths
    durations = [dataset.data[k]["duration"] for k in dataset.data_ids]
    assert durations == sorted(durations, reverse=True)


def test_trial_naming_unknown_utterance_is_an_error(prep):
    write_csv(
        prep / "veri_trials.csv",
        [{"label": 1, "enrol": "u0", "test": "zz"}],
        ["label", "enrol", "test"],
    )
    with pytest.raises(ValueError, match=r"veri_trials.csv line 2: utterance 'zz'"):
        VerificationSet.from_prep("v", prep, "/data")


def test_manifest_missing_column_names_the_file(prep):
    write_csv(prep / "iden_test.csv", [{"ID": "u1", "wav": "x"}], ["ID", "wav"])
    with pytest.raises(ValueError, match="iden_test.csv lacks column"):
        IdentificationSet.from_prep("i", prep, "/data")


def test_identification_report_by_centroid(prep):
    iset = IdentificationSet.from_prep("i", prep, "/data")
    paths = [r["wav"] for r in iset.enrol + iset.test]
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.8, 0.3]])  # u0 a, u2 b, u1 a, u3 b
    report = identification_report(iset, EmbeddingTable(paths, emb), topk=(1,))
    # u1 is nearest to a (right), u3 is nearest to a as well (wrong): 50 %
    assert report["embedding"]["top1"] == 0.5
    assert "classifier" not in report


def test_results_table_has_a_column_per_model():
    veri = {"eer": 0.1, "min_dcf@0.01": 0.5, "tar@far=0.01": 0.7}
    report = {
        "pretrained": {"verification": {"cosine": veri}},
        "finetuned": {"verification": {"cosine": {**veri, "eer": 0.05}}},
    }
    table = speaker_results_table(report, "python x.py")
    assert "| metric | pretrained | finetuned |" in table
    assert "| verification cosine EER (%) | 10.00 | 5.00 |" in table
    assert "Command: `python x.py`" in table


def test_empty_sets_are_skipped_with_a_log_line(prep, tmp_path, caplog):
    vset = VerificationSet.from_prep("verification", tmp_path, tmp_path)
    full = IdentificationSet.from_prep("full", tmp_path, tmp_path)
    write_csv(tmp_path / "empty" / "iden_enrol.csv", [utt(0, "a")], UTT)
    write_csv(tmp_path / "empty" / "iden_test.csv", [], UTT)
    empty = IdentificationSet.from_prep("train_speakers", tmp_path / "empty", tmp_path)
    no_targets = VerificationSet("v2", [(0, "u0", "u2")], vset.paths, vset.rows)
    with caplog.at_level(logging.WARNING):
        assert drop_empty_sets([vset, no_targets]) == [vset]
        assert drop_empty_sets([empty, full]) == [full]
    assert "Skipping the 'train_speakers' evaluation set: no test utterance" in caplog.text
    assert "'v2' evaluation set: only non-target trials" in caplog.text


def test_encoder_classifier_baseline_from_a_local_copy(tmp_path):
    """The tiny ECAPA in speechbrain/spkrec-ecapa-voxceleb's layout loads as a stock
    EncoderClassifier and embeds through encode_batch, at any data sample rate."""
    import torchaudio
    from speechbrain.inference.speaker import EncoderClassifier

    from sepid.speaker.evaluation import (
        interface_embedder,
        load_encoder_classifier,
        source_fingerprint,
    )
    from sepid.tiny import save_tiny_ecapa

    folder = save_tiny_ecapa(tmp_path / "ecapa")
    model = load_encoder_classifier(folder, tmp_path / "savedir", "cpu")
    assert isinstance(model, EncoderClassifier)
    torch.manual_seed(0)
    wavs, lens = torch.randn(2, 16000), torch.tensor([1.0, 0.6])
    emb = interface_embedder(model, 16000)(wavs, lens)
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb, model.encode_batch(wavs, lens).squeeze(1))
    slow = interface_embedder(model, 8000)(wavs[:, ::2], lens)  # resampled to the model's rate
    expected = model.encode_batch(torchaudio.transforms.Resample(8000, 16000)(wavs[:, ::2]), lens)
    torch.testing.assert_close(slow, expected.squeeze(1))
    assert source_fingerprint(folder) != source_fingerprint(tmp_path / "savedir")
    assert source_fingerprint("speechbrain/spkrec-ecapa-voxceleb") == (
        "speechbrain/spkrec-ecapa-voxceleb"
    )
    with pytest.raises(FileNotFoundError, match="hyperparams.yaml"):
        load_encoder_classifier(tmp_path, tmp_path / "s2", "cpu")


def test_verification_report_intervals_and_model_comparison(tmp_path):
    """The evaluation's speaker bootstrap: the speakers come from the utterance manifest, each
    model's EER/minDCF gets its interval, and two models on the same trials their paired
    difference (the same resamples)."""
    n_spk, per_spk = 12, 4
    utts = [utt(s * per_spk + k, f"spk{s}") for s in range(n_spk) for k in range(per_spk)]
    write_csv(tmp_path / "veri_utts.csv", utts, UTT)
    trials = []
    for i, a in enumerate(utts):
        for b in utts[i + 1 :]:
            trials.append(
                {"label": int(a["spk_id"] == b["spk_id"]), "enrol": a["ID"], "test": b["ID"]}
            )
    write_csv(tmp_path / "veri_trials.csv", trials, ["label", "enrol", "test"])
    vset = VerificationSet.from_prep("verification", tmp_path, "/data")
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(n_spk, 16, generator=gen)
    paths = [f"/data/{u['spk_id']}/{u['ID']}.wav" for u in utts]
    spk = torch.arange(len(utts)) // per_spk
    tables = {
        "good": EmbeddingTable(
            paths, centres[spk] + 0.5 * torch.randn(len(utts), 16, generator=gen)
        ),
        "poor": EmbeddingTable(
            paths, centres[spk] + 3.0 * torch.randn(len(utts), 16, generator=gen)
        ),
    }
    boot = trial_bootstrap(vset, samples=200, seed=7, p_targets=(0.01,))
    assert list(boot.speakers) == [f"spk{s}" for s in sorted(range(n_spk), key=str)]
    report = {}
    for tag, table in tables.items():
        metrics, _ = verification_report(
            vset, table, tmp_path, tag, bootstrap=boot, p_targets=(0.01,)
        )
        cosine = metrics["cosine"]
        for key in ("eer", "min_dcf@0.01"):
            interval = cosine["intervals"][key]
            assert interval["low"] <= cosine[key] <= interval["high"]
            assert interval["unit"] == "speaker" and interval["n_units"] == n_spk
        report[tag] = {"verification": metrics}
    comparison = compare_models(boot, report, "verification")
    eer = comparison["good - poor"]["cosine"]["eer"]
    point = (
        report["good"]["verification"]["cosine"]["eer"]
        - report["poor"]["verification"]["cosine"]["eer"]
    )
    assert eer["difference"] == point < 0
    assert eer["interval"]["paired"] and eer["interval"]["high"] < 0  # good beats poor
    table = speaker_results_table(report, "cmd")
    good = report["good"]["verification"]["cosine"]
    low, high = good["intervals"]["eer"]["low"], good["intervals"]["eer"]["high"]
    assert f"{100 * good['eer']:.2f} [{100 * low:.2f}, {100 * high:.2f}]" in table
    assert "bootstrap confidence interval" in table and "12 speakers" in table

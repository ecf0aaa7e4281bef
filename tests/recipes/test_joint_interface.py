"""The joint model's way out of its experiment: a tiny joint run (the real recipes/joint/train.py,
speaker branch from the session's exported speaker model) exported by the command its training
logs (``pretrained_interfaces/export.py``; fixtures in conftest.py), loaded back with ``foreign_class`` / ``from_hparams``: the
same separated signals and embeddings as the training modules, sources written and named."""

import csv
import re
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from speechbrain.inference.interfaces import foreign_class

from pretrained_interfaces.export import export_joint, load_joint_run
from pretrained_interfaces.sepformer_speaker.custom_interface import SepformerSpeakerInterface
from sepid.models.joint import separate_with_modules
from tests.helpers import CORPUS, held_out_test_mixtures

# Exported vs training modules, float32 on CPU. The SepFormer modules are the same tensors, so its
# outputs agree exactly (measured 0); the speaker branch computes W + BA once (merged) instead of
# at every forward, so embeddings agree to rounding (as the speaker interface's round trip).
SIGNAL_ATOL = 1e-6
EMBEDDING_ATOL = 1e-5


def load(folder, **kwargs):
    return foreign_class(
        source=str(folder),
        pymodule_file="custom_interface.py",
        classname="SepformerSpeakerInterface",
        **kwargs,
    )


@pytest.fixture(scope="module")
def exported(exported_joint):
    return exported_joint


@pytest.fixture(scope="module")
def model(exported):
    return load(exported)


@pytest.fixture(scope="module")
def mixture(speaker_experiment, tmp_path_factory):
    """A real two-speaker LibriSpeech mixture (held-out utterances, written by make_mixtures at
    16 kHz: the 8 kHz separator gets resampled input) and its two speakers."""
    folder = held_out_test_mixtures(
        speaker_experiment, tmp_path_factory.mktemp("joint-mix") / "mix", 1
    )
    with open(folder / "test.csv", newline="") as f:
        row = next(csv.DictReader(f))
    path = Path(row["mix_wav"].replace("$data_root", str(folder)))
    return path, {row["s1_spk"], row["s2_spk"]}


def test_training_logs_the_export_command_and_export_writes_a_folder(joint_run, exported):
    _, log = joint_run
    assert "pretrained_interfaces/export.py" in log
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md",
        "classifier.ckpt",
        "custom_interface.py",
        "decoder.ckpt",
        "embedder.ckpt",
        "encoder.ckpt",
        "hyperparams.yaml",
        "label_encoder.ckpt",
        "masknet.ckpt",
    ]
    assert not list(exported.parent.glob(".exported.*")), "temporary folder left behind"
    code = (exported / "custom_interface.py").read_text()
    # self-contained: the speaker interface inlined, nothing of this repository imported
    assert "class WavLMSpeakerEmbedder" in code
    assert not re.search(r"^\s*(from|import) (pretrained_interfaces|sepid)\b", code, re.M)
    card = (exported / "README.md").read_text()
    assert "library_name: speechbrain" in card.split("---")[1]
    assert "SepformerSpeakerInterface" in card and "recipes/joint/train.py" in card


def test_round_trip_gives_the_training_modules_outputs(joint_run, exported, mixture, tmp_path):
    """foreign_class and from_hparams separate a real mixture exactly as the training modules
    (best checkpoint, built independently of the export) and embed the sources alike."""
    run, _ = joint_run
    hparams, _ = load_joint_run(run, collect_in=tmp_path)
    by_foreign = load(exported)
    by_class = SepformerSpeakerInterface.from_hparams(source=str(exported))
    mix = by_class.read_audio(mixture[0], sample_rate=8000).unsqueeze(0)
    assert mix.shape[1] > 8000  # seconds of real speech
    with torch.no_grad():
        expected = separate_with_modules(
            hparams["separator_encoder"],
            hparams["masknet"],
            hparams["separator_decoder"],
            mix,
            hparams["num_spks"],
        )
        outputs = hparams["resampler"](expected.transpose(1, 2).reshape(-1, expected.shape[1]))
        expected_emb = F.normalize(hparams["speaker_encoder"](outputs), dim=-1)
    for interface in (by_foreign, by_class):
        got = interface.separate_signals(mix)
        assert got.shape == expected.shape == (1, mix.shape[1], 2)
        torch.testing.assert_close(got, expected, atol=SIGNAL_ATOL, rtol=0)
        sources = interface.separate_batch(mix)[0]
        assert len(sources) == 2
        for i, source in enumerate(sources):
            torch.testing.assert_close(source.signal, expected[0, :, i], atol=SIGNAL_ATOL, rtol=0)
            torch.testing.assert_close(
                source.embedding, expected_emb[i], atol=EMBEDDING_ATOL, rtol=0
            )


def test_separate_file_writes_named_sources(model, mixture, tmp_path):
    path, _ = mixture
    out = tmp_path / "out"
    sources = model.separate_file(path, save_folder=out)
    assert len(sources) == 2 and len(list(out.iterdir())) == 2
    training_speakers = set(model.hparams.label_encoder.lab2ind)
    expected = model.separate_signals(model.read_audio(path, sample_rate=8000).unsqueeze(0))[0]
    for i, source in enumerate(sources):
        assert source.speaker in training_speakers  # no enrolment: the training speakers
        assert -1.0 - 1e-6 <= source.score <= 1.0 + 1e-6
        assert abs(float(source.embedding.norm()) - 1.0) < 1e-5
        assert Path(source.path).name == f"{path.stem}_{i + 1}_{source.speaker}.wav"
        data, rate = sf.read(source.path, dtype="float32")
        assert rate == 8000 and data.shape == (expected.shape[0],)
        torch.testing.assert_close(torch.from_numpy(data), expected[:, i], atol=1e-4, rtol=0)
    # without save_folder nothing is written
    assert all(s.path is None for s in model.separate_file(path))


def test_enrol_names_the_outputs(exported, mixture, tmp_path):
    model = load(exported)  # its own instance: enrolment is state
    path, speakers = mixture
    a, b = sorted(speakers)
    enrolment = {
        "alice": sorted((CORPUS / a).rglob("*.flac"))[:2],
        "bob": sorted((CORPUS / b).rglob("*.flac"))[:2],
    }
    centroids = model.enrol(enrolment)
    assert set(centroids) == {"alice", "bob"}
    sources = model.separate_file(path, save_folder=tmp_path)
    names = {"alice", "bob"}
    for source in sources:
        assert source.speaker in names
        scores = {n: float(source.embedding @ c) for n, c in centroids.items()}
        assert source.speaker == max(scores, key=scores.get)
        assert abs(source.score - scores[source.speaker]) < 1e-5
        assert source.speaker in Path(source.path).name
    model.enrol(None)
    training_speakers = set(model.hparams.label_encoder.lab2ind)
    assert all(s.speaker in training_speakers for s in model.separate_file(path))
    with pytest.raises(ValueError, match="at least one file"):
        model.enrol({"carol": []})


def test_speaker_and_joint_models_load_in_one_process(exported, exported_speaker):
    """Both folders carry a custom_interface.py; whichever is imported first, the other loads
    and keeps its own class (the joint YAML names only classes both files define)."""
    speaker = foreign_class(
        source=str(exported_speaker),
        pymodule_file="custom_interface.py",
        classname="WavLMSpeakerInterface",
    )
    joint = load(exported)
    again = foreign_class(
        source=str(exported_speaker),
        pymodule_file="custom_interface.py",
        classname="WavLMSpeakerInterface",
    )
    assert type(joint).__name__ == "SepformerSpeakerInterface"
    wav = sorted((CORPUS / "1688").rglob("*.flac"))[0]
    torch.testing.assert_close(speaker.encode_file(wav), again.encode_file(wav))


# ------------------------------------------------------------------------ errors ---
def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        SepformerSpeakerInterface.from_hparams(source=str(tmp_path / "no-such-model"))
    with pytest.raises(FileNotFoundError, match="recipes/joint/train.py"):
        export_joint(run_folder=tmp_path / "no-such-run", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("missing", ["masknet.ckpt", "embedder.ckpt"])
def test_missing_weight_file_is_one_clear_error(exported, tmp_path, missing):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / missing).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        SepformerSpeakerInterface.from_hparams(source=str(broken))
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load(broken)


def test_export_refuses_to_overwrite(joint_run, tmp_path):
    run, _ = joint_run
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_joint(run_folder=run, out=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

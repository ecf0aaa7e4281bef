"""The joint model's way out of its experiment: a tiny joint run (the real recipes/joint/train.py,
speaker branch from the session's exported speaker model) exported by the command its training
logs (``pretrained_interfaces/export.py``; fixtures in conftest.py), loaded back with
``foreign_class`` / ``from_hparams`` (locally and through a stand-in Hub on 127.0.0.1): the same
separated signals and embeddings as the training modules, long files in aligned chunks, sources
written and named."""

import csv
import re
import shutil
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from speechbrain.inference.interfaces import foreign_class

from pretrained_interfaces.export import export_joint, load_joint_run
from pretrained_interfaces.sepformer_speaker.custom_interface import (
    SepformerSpeakerInterface,
    _resampler,
    resample_in_pieces,
)
from sepid.joint import separate_with_modules
from tests.helpers import CORPUS, held_out_test_mixtures
from tests.hub_server import HubServer, listing

# Exported vs training modules, float32 on CPU. The SepFormer modules are the same tensors, so its
# outputs agree exactly (measured 0); the speaker branch computes W + BA once (merged) instead of
# at every forward, so embeddings agree to rounding (as the speaker interface's round trip).
SIGNAL_ATOL = 1e-6
EMBEDDING_ATOL = 1e-5
WHOLE = {"separation_chunk_seconds": None}  # one separator pass, however long the mixture
TOKEN = "hf_standin_joint_secret_0123456789"


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
    assert (
        "def separate_in_chunks" in code
    )  # sepid/separation/separator.py's chunking, the one copy
    assert not re.search(r"^\s*(from|import) (pretrained_interfaces|sepid)\b", code, re.M)
    card = (exported / "README.md").read_text()
    assert "library_name: speechbrain" in card.split("---")[1]
    assert "SepformerSpeakerInterface" in card and "recipes/joint/train.py" in card


def test_round_trip_gives_the_training_modules_outputs(joint_run, exported, mixture, tmp_path):
    """foreign_class and from_hparams separate a real mixture exactly as the training modules
    (best checkpoint, built independently of the export) and embed the sources alike."""
    run, _ = joint_run
    hparams, _ = load_joint_run(run, collect_in=tmp_path)
    by_foreign = load(exported, overrides=WHOLE)
    by_class = SepformerSpeakerInterface.from_hparams(source=str(exported), overrides=WHOLE)
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


def test_padded_mixtures_in_a_batch_give_what_each_gives_alone(model, mixture):
    """separate_batch with ``mix_lens`` (issue 18): a mixture zero-padded in a batch (here to 4x
    its length) gets the sources, speakers and embeddings it gets alone."""
    mix = model.read_audio(mixture[0], sample_rate=8000)
    short = mix[: mix.shape[0] // 4]
    batch = torch.zeros(2, mix.shape[0])
    batch[0], batch[1, : short.shape[0]] = mix, short
    together = model.separate_batch(batch, torch.tensor([1.0, short.shape[0] / mix.shape[0]]))
    for signal, got in zip((mix, short), together, strict=True):
        alone = model.separate_batch(signal.unsqueeze(0))[0]
        for a, b in zip(alone, got, strict=True):
            assert b.signal.shape == a.signal.shape == signal.shape
            torch.testing.assert_close(b.signal, a.signal, atol=SIGNAL_ATOL, rtol=0)
            assert float(a.embedding @ b.embedding) >= 0.99999
            assert b.speaker == a.speaker
            assert b.score == pytest.approx(a.score, abs=1e-5)


def test_mixtures_that_cannot_be_separated_are_clear_errors(model, tmp_path):
    """Issue 22 items 5 and 13: a silent file is neither separated into named speakers nor
    accepted for enrolment; a mixture too short for one frame of the speaker branch says the
    minimum (25 ms) instead of a kernel-size error; NaN samples are refused."""
    silent = tmp_path / "silent.wav"
    sf.write(silent, torch.zeros(16000).numpy(), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="digitally silent or constant") as error:
        model.separate_file(silent)
    assert str(silent) in str(error.value)
    with pytest.raises(ValueError, match=f"Audio file {re.escape(str(silent))} is digitally"):
        model.enrol({"alice": [silent]})
    short = tmp_path / "short.wav"
    sf.write(short, (0.1 * torch.randn(80)).numpy(), 8000, subtype="FLOAT")  # 10 ms
    with pytest.raises(ValueError, match=r"80 samples .*at least 200 samples \(0.025 s at 8000"):
        model.separate_file(short)
    mixtures = 0.1 * torch.randn(2, 8000)
    mixtures[1, 100] = float("nan")
    with pytest.raises(ValueError, match="Mixture 1 of the batch contains NaN"):
        model.separate_batch(mixtures)


def test_separate_file_writes_named_sources(model, mixture, tmp_path):
    path, _ = mixture
    out = tmp_path / "out"
    sources = model.separate_file(path, save_folder=out)
    assert len(sources) == 2 and len(list(out.iterdir())) == 2
    training_speakers = set(model.hparams.label_encoder.lab2ind)
    expected = model.separate_chunked(model.read_audio(path, sample_rate=8000).unsqueeze(0))[0]
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


# ------------------------------------------------------------------- long files ---
def ncorr(a, b):
    """Normalised correlation ``[i, j]`` of the columns of ``a [T, n]`` and ``b [T, m]``."""
    a, b = a - a.mean(0), b - b.mean(0)
    return (a.T @ b) / (a.norm(dim=0)[:, None] * b.norm(dim=0)[None] + 1e-12)


def chunk_spans(total, chunk, overlap):
    """The ``(start, stop)`` of what each chunk alone contributes (overlaps left out)."""
    spans, hop, start = [], chunk - overlap, 0
    while True:
        stop = min(start + chunk, total)
        spans.append((start + (overlap if start else 0), stop - (overlap if stop < total else 0)))
        if stop == total:
            return spans
        start += hop


def test_file_shorter_than_a_chunk_is_separated_whole(model, mixture, tmp_path):
    """The export's chunk length (the run's separation_chunk_seconds) exceeds the file: one pass,
    identical to the whole-signal forward, embeddings of the whole sources."""
    rate = int(model.hparams.separator_sample_rate)
    seconds = min(3.0, model.hparams.separation_chunk_seconds - 0.5)
    mix = model.read_audio(mixture[0], sample_rate=rate)[: int(seconds * rate)]
    path = tmp_path / "short.wav"
    sf.write(path, mix.numpy(), rate, subtype="FLOAT")
    whole = model.separate_signals(mix.unsqueeze(0))[0]
    sources = model.separate_file(path)
    expected_emb = model.encode_batch(_to_speaker_rate(model, whole.T))
    for i, source in enumerate(sources):
        assert torch.equal(source.signal, whole[:, i])
        torch.testing.assert_close(source.embedding, expected_emb[i], atol=1e-6, rtol=0)


def _to_speaker_rate(model, signals):
    module = sys.modules[type(model).__module__]
    rate = int(model.hparams.separator_sample_rate)
    return module._resampler(rate, int(model.hparams.sample_rate))(signals)


@pytest.mark.parametrize("rates", [(8000, 16000), (16000, 8000), (44100, 16000), (11025, 16000)])
def test_resampling_in_pieces_is_resampling_whole(rates):
    """The separated sources go to the speaker branch's rate a piece at a time (the resampler's
    convolution unfolds its input ~15x): with the filter's context on both sides the result is
    the whole signal's, exactly, whatever the rates and the length."""
    orig, new = rates
    torch.manual_seed(0)
    for length in (orig // 2, 5 * orig + 17, 13 * orig + 3):
        signals = torch.randn(3, length)
        got = resample_in_pieces(signals, orig, new, piece_samples=2 * orig)
        assert torch.equal(got, _resampler(orig, new)(signals))


CHUNKED = {
    "separation_chunk_seconds": 1.5,
    "separation_overlap_seconds": 0.25,
    "chunk_seconds": 1.0,  # the speaker branch's chunks
}


@pytest.fixture(scope="module")
def chunked(exported):
    """The exported model with short chunks, so a 5 s mixture spans several."""
    return load(exported, overrides=CHUNKED)


def swapping(separate_signals, calls):
    """The real separator with its output order reversed on every other call, as a separator's
    arbitrary order per call may come out; records each call's input length in ``calls``."""

    def separate(mixtures):
        calls.append(mixtures.shape[1])
        sources = separate_signals(mixtures)
        return sources.flip(-1) if len(calls) % 2 == 0 else sources

    return separate


def test_long_file_is_separated_in_aligned_chunks(chunked, mixture, monkeypatch):
    """A file of several chunks: no separator call longer than a chunk, no embedder call longer
    than ``chunk_seconds``, and each output follows the same source across every chunk boundary.
    The tiny model does not separate speech yet (one epoch), so the sources it must follow are its
    own outputs of the whole file (distinct: each chunk's output i correlates with whole output i
    at ~0.95, with the other at ~0.25)."""
    rate = int(chunked.hparams.separator_sample_rate)
    chunk, overlap = int(1.5 * rate), int(0.25 * rate)
    mix = chunked.read_audio(mixture[0], sample_rate=rate)
    spans = chunk_spans(mix.shape[0], chunk, overlap)
    assert len(spans) >= 3
    whole = chunked.separate_signals(mix.unsqueeze(0))[0]
    calls, embedder_inputs = [], []
    monkeypatch.setattr(chunked, "separate_signals", swapping(chunked.separate_signals, calls))
    hook = chunked.mods.embedder.register_forward_pre_hook(
        lambda _, args: embedder_inputs.append(args[0].shape[1])
    )
    try:
        sources = chunked.separate_file(mixture[0])
    finally:
        hook.remove()
    assert len(calls) == len(spans) and max(calls) == chunk
    # embed_in_chunks: chunks of chunk_seconds, a final one under half a chunk joins the last
    assert embedder_inputs and max(embedder_inputs) < 1.5 * chunked.hparams.sample_rate
    out = torch.stack([s.signal for s in sources], dim=1)
    assert out.shape == whole.shape
    # the sources resampled to 16 kHz in pieces are the whole sources resampled: same embeddings
    expected_emb = chunked.encode_batch(_to_speaker_rate(chunked, out.T))
    for i, source in enumerate(sources):
        torch.testing.assert_close(source.embedding, expected_emb[i], atol=1e-6, rtol=0)
    for start, stop in spans:
        corr = ncorr(out[start:stop], whole[start:stop])
        assert corr.diagonal().min() > 0.6, (start, corr)
        assert corr.diagonal().min() > corr.fliplr().diagonal().max() + 0.3, (start, corr)


def test_alignment_undoes_a_separator_swapping_its_outputs(chunked, mixture, monkeypatch):
    """The same chunks, the separator's output order reversed on every other call: the stitched
    sources are exactly those of the unswapped separator. Without the alignment between chunks,
    every other chunk would carry the other speaker."""
    mix = chunked.read_audio(mixture[0], sample_rate=8000).unsqueeze(0)
    expected = chunked.separate_chunked(mix)
    calls = []
    monkeypatch.setattr(chunked, "separate_signals", swapping(chunked.separate_signals, calls))
    got = chunked.separate_chunked(mix)
    assert len(calls) >= 3
    assert torch.equal(got, expected)
    # ... and a batch is aligned mixture by mixture (the second one reversed in time)
    batch = torch.cat([mix, mix.flip(1)])
    calls.clear()
    got = chunked.separate_chunked(batch)
    monkeypatch.undo()
    # (a batch and a single mixture may round differently in the separator's matrix products)
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], chunked.separate_chunked(batch[1:])[0], atol=1e-5, rtol=0)


def test_enrol_threshold_names_unknown_speakers(exported, mixture, tmp_path):
    """Below the enrolment threshold an output is "unknown" (score still the best cosine): the
    threshold defaults to hyperparams.yaml's enrol_threshold and enrol(threshold=) overrides it."""
    path, speakers = mixture
    enrolment = {
        name: sorted((CORPUS / spk).rglob("*.flac"))[:2]
        for name, spk in zip(("alice", "bob"), sorted(speakers), strict=True)
    }
    model = load(exported)
    assert model.hparams.enrol_threshold is None  # the exported default: always a name
    model.enrol(enrolment)
    named = model.separate_file(path)
    assert {s.speaker for s in named} <= {"alice", "bob"}
    scores = sorted(s.score for s in named)
    # a threshold between the two outputs' best scores: the lower one is unknown
    middle = (scores[0] + scores[1]) / 2
    model.enrol(enrolment, threshold=middle)
    sources = model.separate_file(path, save_folder=tmp_path)
    for source, before in zip(sources, named, strict=True):
        assert source.score == pytest.approx(before.score, abs=1e-6)
        expected = "unknown" if before.score < middle else before.speaker
        assert source.speaker == expected
        assert Path(source.path).name.endswith(f"_{expected}.wav")
    assert sorted(s.speaker == "unknown" for s in sources) == [False, True]
    # the default from hyperparams.yaml, overridden by enrol(threshold=)
    strict = load(exported, overrides={"enrol_threshold": 1.01})
    strict.enrol(enrolment)
    assert all(s.speaker == "unknown" for s in strict.separate_file(path))
    strict.enrol(enrolment, threshold=-1.01)
    assert all(s.speaker in {"alice", "bob"} for s in strict.separate_file(path))
    with pytest.raises(ValueError, match="unknown"):
        model.enrol({"unknown": enrolment["alice"]})


# --------------------------------------------------------------------------- Hub ---
def test_hub_round_trip_through_a_local_stand_in(joint_run, exported, mixture, tmp_path):
    """export.py --push of the joint run to the stand-in Hub (HF_ENDPOINT), then foreign_class and
    from_hparams with source="user/repo" into an empty cache: the same files, the same separated
    signals, speakers and embeddings, the token in no output."""
    run, _ = joint_run
    path, _ = mixture
    with HubServer(token=TOKEN) as hub:
        out = tmp_path / "pushed"
        push = hub.push(run, out, "user/joint", str(tmp_path / "hf-push"))
        files = hub.repos["user/joint"]["main"]
        assert listing(out) == listing(exported) | {"README.md": listing(out)["README.md"]}
        assert 'source="user/joint"' in files["README.md"].decode()

        code = (
            "import sys, torch\n"
            "from speechbrain.inference.interfaces import foreign_class\n"
            "from pretrained_interfaces.sepformer_speaker.custom_interface import (\n"
            "    SepformerSpeakerInterface)\n"
            "by_foreign = foreign_class(source='user/joint', pymodule_file='custom_interface.py',\n"
            "    classname='SepformerSpeakerInterface', savedir=sys.argv[1] + '/foreign')\n"
            "by_class = SepformerSpeakerInterface.from_hparams(source='user/joint',\n"
            "    savedir=sys.argv[1] + '/class')\n"
            "got = {}\n"
            "for name, m in (('foreign', by_foreign), ('class', by_class)):\n"
            "    s = m.separate_file(sys.argv[2])\n"
            "    got[name] = ([x.signal for x in s], [x.embedding for x in s],\n"
            "                 [x.speaker for x in s])\n"
            "torch.save(got, sys.argv[3])\n"
        )
        result = tmp_path / "separated.pt"
        load_proc = hub.load(code, str(tmp_path / "hf-load"), tmp_path / "savedir", path, result)
        downloads = {
            p.rsplit("/", 1)[1] for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p
        }
        assert downloads >= {"hyperparams.yaml", "custom_interface.py", "masknet.ckpt"}
    for text in (push.stdout, push.stderr, load_proc.stdout, load_proc.stderr):
        assert TOKEN not in text
    expected = load(exported).separate_file(path)
    for signals, embeddings, speakers in torch.load(result).values():
        assert speakers == [s.speaker for s in expected]
        for i, source in enumerate(expected):
            torch.testing.assert_close(signals[i], source.signal, atol=0, rtol=0)
            torch.testing.assert_close(embeddings[i], source.embedding, atol=0, rtol=0)


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
    with pytest.raises(FileExistsError, match="not a previous export.*keep.txt"):
        export_joint(run_folder=run, out=out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # the training run itself, or the folder that holds it, is never replaced (issue 22)
    before = sorted(p.relative_to(run.parent) for p in run.parent.rglob("*"))
    for target in (run, run.parent):
        with pytest.raises(FileExistsError, match="training run"):
            export_joint(run_folder=run, out=target, overwrite=True)
    assert sorted(p.relative_to(run.parent) for p in run.parent.rglob("*")) == before


@pytest.mark.parametrize(
    "name, how",
    [
        ("masknet.ckpt", "empty"),
        ("masknet.ckpt", "shape"),
        ("encoder.ckpt", "half"),
        ("masknet.ckpt", "zero"),
        ("decoder.ckpt", "extra"),
    ],
)
def test_damaged_or_mismatched_file_is_one_clear_error(exported, tmp_path, name, how):
    """The separator's files are loaded as strictly as the speaker branch's (helper and the
    speaker cases in test_speaker_interface.py)."""
    from tests.recipes.test_speaker_interface import damage

    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    damage(broken / name, how)
    message = rf"{re.escape(name)}.*(download it again|export it again)"
    with pytest.raises(ValueError, match=message):
        SepformerSpeakerInterface.from_hparams(source=str(broken))
    with pytest.raises(ValueError, match=message):
        load(broken)


def test_enrol_says_what_to_pass_and_refuses_names_that_share_a_file_name(model, tmp_path):
    files = sorted(CORPUS.rglob("*.flac"))[:1]
    with pytest.raises(TypeError, match=r"mapping \{name: \[audio files\]\}"):
        model.enrol(files)
    with pytest.raises(ValueError, match=r"'a/b' and 'a_b'.*same output file name"):
        model.enrol({"a/b": files, "a_b": files})
    assert model.enrolled is None  # nothing half-enrolled


def test_a_joint_model_without_threshold_says_how_a_joint_model_gets_one(exported, tmp_path):
    """verify_files on a joint export without a threshold names the joint route (--threshold or a
    speaker source exported after evaluation), not the speaker recipe's evaluate.py (issue 20)."""
    folder = tmp_path / "no-threshold"
    shutil.copytree(exported, folder)
    text = (folder / "hyperparams.yaml").read_text()
    (folder / "hyperparams.yaml").write_text(
        re.sub(r"^threshold: .*$", "threshold: null", text, flags=re.M)
    )
    wav = sorted(CORPUS.rglob("*.flac"))[0]
    with pytest.raises(ValueError, match="export the joint run again with --threshold"):
        load(folder).verify_files(wav, wav)

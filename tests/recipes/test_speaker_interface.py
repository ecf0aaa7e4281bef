"""The speaker model's way out of an experiment: ``pretrained_interfaces/export.py`` writes a
Hub-ready folder from the tiny trained demo model, which loads back with ``foreign_class`` /
``from_hparams`` (locally and through a stand-in Hub on 127.0.0.1) and gives the training
modules' embeddings."""

import hashlib
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from speechbrain.inference.interfaces import foreign_class

from pretrained_interfaces.export import (
    REPOSITORY,
    PublishError,
    check_output_target,
    export_speaker,
    load_run,
    main,
    push_folder,
)
from pretrained_interfaces.speaker.custom_interface import WavLMSpeakerInterface
from sepid.speaker.encoder import embed_in_chunks
from tests.helpers import CORPUS
from tests.hub_server import HubServer, listing

TRAIN_SPEAKERS = {
    "1688": "1688-142285",
    "1998": "1998-15444",
    "2033": "2033-164914",
    "2414": "2414-128291",
    "2609": "2609-156975",
}
# Exported vs training modules, float32 on CPU: merged LoRA weights are W + BA computed once
# instead of at every forward, so the two agree to rounding.
ATOL = 1e-5
TOKEN = "hf_standin_secret_0123456789"
# the evaluation data folder as tests/hparams/speaker-overrides.yaml gives it (the embedding
# table's keys are the audio paths built from it)
EVAL_DATA = "tests/samples/librispeech-mini/test-other"


def utt(speaker, i):
    return CORPUS / speaker / f"{TRAIN_SPEAKERS[speaker]}-{i:04d}.flac"


def load(folder, **kwargs):
    return foreign_class(
        source=str(folder),
        pymodule_file="custom_interface.py",
        classname="WavLMSpeakerInterface",
        **kwargs,
    )


@pytest.fixture(scope="module")
def run(speaker_evaluated):
    """The session's trained tiny model, evaluated (eval/metrics.json: the model card results and
    the EER threshold); shared with other files, so read here, never written."""
    return speaker_evaluated


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    return export_speaker(run_folder=run, out=tmp_path_factory.mktemp("interface") / "exported")


@pytest.fixture(scope="module")
def model(exported):
    return load(exported)


@pytest.fixture(scope="module")
def training_encoder(run):
    """The training encoder (LoRA unmerged) with the best checkpoint, built independently."""
    hparams, _, _ = load_run(run)
    return hparams


def test_export_writes_a_hub_ready_folder(run, exported):
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md",
        "classifier.ckpt",
        "custom_interface.py",
        "embedder.ckpt",
        "hyperparams.yaml",
        "label_encoder.ckpt",
    ]
    assert not list(exported.parent.glob(".exported.*")), "temporary folder left behind"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    cosine = metrics["models"]["finetuned"]["verification"]["cosine"]
    yaml_text = (exported / "hyperparams.yaml").read_text()
    assert re.search(r"^threshold: (\S+)$", yaml_text, re.M).group(1) == json.dumps(
        cosine["eer_threshold"]
    )
    assert re.search(r"^lora: null$", yaml_text, re.M)  # merged by default
    card = (exported / "README.md").read_text()
    header = card.split("---")[1]
    assert "library_name: speechbrain" in header and "license: apache-2.0" in header
    assert "model-index:" in header and "- openslr/librispeech_asr" in header
    assert f"value: {round(cosine['eer'] * 100, 4)}" in header
    assert "foreign_class(" in card and "recipes/speaker/train.py" in card
    assert "## Limitations" in card


def test_round_trip_gives_the_training_embeddings(exported, training_encoder):
    """foreign_class and from_hparams give the training modules' embeddings, short and long
    (chunked) inputs alike."""
    encoder = training_encoder["encoder"]
    chunk = int(training_encoder["eval_chunk_seconds"] * 16000)
    short = sf.read(utt("1998", 4), dtype="float32")[0][: 3 * 16000]
    long = sf.read(utt("1688", 0), dtype="float32")[0]  # 15 s: two chunks of 8 s
    assert len(long) > 1.5 * chunk
    by_foreign = load(exported)
    by_class = WavLMSpeakerInterface.from_hparams(source=str(exported))
    for wav in (short, long):
        wav = torch.from_numpy(wav).unsqueeze(0)
        with torch.no_grad():
            expected = F.normalize(embed_in_chunks(encoder, wav, torch.ones(1), chunk), dim=-1)
        for interface in (by_foreign, by_class):
            got = interface.encode_batch(wav, torch.ones(1))
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
            assert torch.allclose(got.norm(dim=-1), torch.ones(1))
    # encode_file reads the same samples
    torch.testing.assert_close(
        by_class.encode_file(utt("1688", 0)),
        by_class.encode_batch(torch.from_numpy(long).unsqueeze(0))[0],
        atol=0,
        rtol=0,
    )


# A user's Python: the exported folder's own code only. Whatever installs this repository (the
# editable install puts sepid on every interpreter's path) is refused, so an import of it fails.
LOAD_WITHOUT_THE_REPOSITORY = """
import importlib.abc, sys

PROJECT = ("sepid", "pretrained_interfaces", "recipes", "tests")


class NoProjectCode(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in PROJECT:
            raise ModuleNotFoundError(f"{name} is this repository's code, not the export's")
        return None


sys.meta_path.insert(0, NoProjectCode())
import torch
from speechbrain.inference.interfaces import foreign_class

folder, wav, out, root = sys.argv[1:5]
spk = foreign_class(source=folder, pymodule_file="custom_interface.py",
                    classname="WavLMSpeakerInterface")
torch.save(spk.encode_file(wav), out)
assert not [m for m in sys.modules if m.partition(".")[0] in PROJECT]
assert root not in sys.path
"""


def test_export_loads_with_no_file_of_the_repository(exported, model, tmp_path):
    """The exported folder, copied out of the repository and loaded by ``python -I`` from
    elsewhere with this project's packages unimportable, gives the in-process embedding: the
    inlined model code is all it needs."""
    folder = tmp_path / "elsewhere" / "model"
    shutil.copytree(exported, folder)
    wav, out = utt("2414", 2), tmp_path / "emb.pt"
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_WITHOUT_THE_REPOSITORY, folder, wav, out, REPOSITORY],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.testing.assert_close(torch.load(out), model.encode_file(wav), atol=ATOL, rtol=0)


def test_adapters_export_round_trip(run, exported, tmp_path, training_encoder):
    """--adapters: LoRA tensors and head only, base WavLM weights fetched by the Pretrainer from
    the base model; same embeddings, a smaller weight file."""
    out = export_speaker(run_folder=run, out=tmp_path / "adapters", adapters=True)
    merged_size = (exported / "embedder.ckpt").stat().st_size
    assert (out / "embedder.ckpt").stat().st_size < merged_size
    # a local base model outside the repository is a placeholder (issue 22 item 3), given on load
    assert '"<wavlm_source>/model.safetensors"' in (out / "hyperparams.yaml").read_text()
    base = f"{training_encoder['encoder'].source}/model.safetensors"
    wav = torch.from_numpy(sf.read(utt("2033", 2), dtype="float32")[0]).unsqueeze(0)
    with torch.no_grad():
        expected = F.normalize(training_encoder["encoder"](wav), dim=-1)
    got = load(out, overrides={"base_weights": base}).encode_batch(wav)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_interface_gives_the_evaluations_embedding_of_every_utterance(run, model):
    """One embedding path (issue 18): the exported interface's ``encode_file`` of every utterance
    the evaluation embedded (in batches of eval_batch_size=8, long files in chunks) equals the
    embedding it cached, so every trial scores the same and the interface's EER is the
    evaluation's."""
    from sepid.data.schema import VERI_UTTS_CSV
    from sepid.speaker.evaluation import VerificationSet
    from sepid.speaker.metrics import verification_metrics
    from sepid.speaker.scoring import EmbeddingTable, cosine_scores

    cached = EmbeddingTable.load(run / "eval" / "embeddings_finetuned.pt")
    assert len(cached) == 75
    interface = EmbeddingTable(cached.ids, torch.stack([model.encode_file(p) for p in cached.ids]))
    cosine = (interface.embeddings * cached.embeddings).sum(-1)
    assert cosine.min() >= 0.99999, cosine.min()
    every_pair = interface.embeddings @ interface.embeddings.T
    assert (every_pair - cached.embeddings @ cached.embeddings.T).abs().max() <= 1e-5
    # the evaluation's own trial list and reported EER
    (prep,) = {p.parent for p in run.rglob(VERI_UTTS_CSV)}
    vset = VerificationSet.from_prep("verification", prep, EVAL_DATA)
    pairs = [(vset.paths[e], vset.paths[t]) for _, e, t in vset.trials]
    labels = torch.tensor([label for label, _, _ in vset.trials])
    ours, theirs = cosine_scores(interface, pairs), cosine_scores(cached, pairs)
    assert len(pairs) > 100 and (ours - theirs).abs().max() <= 1e-5
    reported = json.loads((run / "eval" / "metrics.json").read_text())
    eer = reported["models"]["finetuned"]["verification"]["cosine"]["eer"]
    assert verification_metrics(ours.numpy(), labels.numpy())["eer"] == pytest.approx(eer)


def test_batched_calls_equal_one_file_at_a_time(model):
    """encode_batch / verify_batch / classify_batch of files zero-padded together (up to 8x the
    shortest) give what each file gives alone."""
    files = [utt("1688", 0), utt("1998", 4), utt("2033", 2), utt("2414", 2)]
    signals = [model.read_audio(f) for f in files]
    signals.append(signals[1][: 16000 * 15 // 8])  # a short one: the batch pads it ~8x
    total = max(len(s) for s in signals)
    wavs = torch.zeros(len(signals), total)
    for i, s in enumerate(signals):
        wavs[i, : len(s)] = s
    lens = torch.tensor([len(s) / total for s in signals])
    alone = torch.stack([model.encode_batch(s.unsqueeze(0))[0] for s in signals])
    batched = model.encode_batch(wavs, lens)
    assert (batched * alone).sum(-1).min() >= 0.99999
    scores, _ = model.verify_batch(wavs, wavs.roll(1, 0), lens, lens.roll(1, 0), threshold=0.5)
    expected = (alone * alone.roll(1, 0)).sum(-1)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    top, labels = model.classify_batch(wavs, lens, topk=3)
    for i, s in enumerate(signals):
        top_alone, labels_alone = model.classify_batch(s.unsqueeze(0), topk=3)
        assert labels[i] == labels_alone[0]
        torch.testing.assert_close(top[i], top_alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "name, samples, message",
    [
        ("silent", torch.zeros(16000), "digitally silent or constant"),
        ("dc", torch.full((16000,), 0.25), "digitally silent or constant"),
        ("10ms", torch.randn(160) * 0.1, r"160 samples \(0.010 s\) long.*at least 400 samples"),
        ("1sample", torch.tensor([0.3]), r"1 samples .*at least 400 samples \(0.025 s"),
    ],
)
def test_audio_that_cannot_be_embedded_is_a_clear_error(model, tmp_path, name, samples, message):
    """Issue 22 items 5 and 13: no confident answer on silence or a constant, and the minimum
    length instead of torch's kernel-size error; every entry point names the file."""
    path = tmp_path / f"{name}.wav"
    sf.write(path, samples.numpy(), 16000, subtype="FLOAT")
    speech = utt("1998", 4)
    for call in (
        lambda: model.encode_file(path),
        lambda: model.verify_files(path, path, threshold=0.5),
        lambda: model.verify_files(speech, path, threshold=0.5),
        lambda: model.classify_file(path),
    ):
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert str(path) in str(error.value)
    batch = torch.zeros(2, 16000)
    batch[0] = torch.randn(16000) * 0.1
    batch[1, : len(samples)] = samples
    with pytest.raises(ValueError, match=f"Input 1 of the batch .*{message}"):
        model.encode_batch(batch, torch.tensor([1.0, len(samples) / 16000]))


def test_nan_samples_and_empty_input_are_clear_errors(model):
    wav = torch.randn(2, 16000) * 0.1
    wav[1, 5000] = float("nan")
    with pytest.raises(ValueError, match="Input 1 of the batch contains NaN or infinite"):
        model.encode_batch(wav)
    # NaN in the padding beyond an input's length is not the input's
    assert model.encode_batch(wav, torch.tensor([1.0, 0.25])).isfinite().all()
    with pytest.raises(ValueError, match="0 samples .*at least 400 samples"):
        model.encode_batch(torch.zeros(1, 0))


def test_any_sample_rate_and_channel_count(model, tmp_path, caplog):
    wav, rate = sf.read(utt("2414", 2), dtype="float32")
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, torch.stack([torch.from_numpy(wav)] * 2, dim=1).numpy(), rate)
    torch.testing.assert_close(model.encode_file(stereo), model.encode_file(utt("2414", 2)))
    low = torch.from_numpy(wav[::2].copy())  # 8 kHz
    low_file = tmp_path / "low.wav"
    sf.write(low_file, low.numpy(), 8000, subtype="FLOAT")
    type(model).read_audio.__globals__["_resampler"].cache_clear()  # logs once per rate pair
    with caplog.at_level(logging.INFO):
        got = model.read_audio(low_file)
    assert got.shape[0] == 2 * low.shape[0]
    assert "Resampling audio from 8000 Hz to 16000 Hz" in caplog.text
    expected = model.encode_batch(got.unsqueeze(0))[0]
    torch.testing.assert_close(model.encode_file(low_file), expected, atol=0, rtol=0)


def test_verify_files_scores_same_speaker_above_different_speakers(model):
    """The tiny model trained 1 epoch on these 5 speakers separates them weakly: measured mean
    cosine 0.968 (same) vs 0.928 (different) over these pairs, so the test compares averages."""
    speakers = sorted(TRAIN_SPEAKERS)
    same = [model.verify_files(utt(s, 7), utt(s, 8))[0] for s in speakers]
    diff = [
        model.verify_files(utt(a, 7), utt(b, 8))[0]
        for a, b in zip(speakers, speakers[1:] + speakers[:1], strict=True)
    ]
    assert sum(same) / len(same) > sum(diff) / len(diff), (same, diff)
    assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in same + diff)


def test_verification_threshold_default_and_override(model, run):
    cosine = json.loads((run / "eval" / "metrics.json").read_text())["models"]["finetuned"]
    threshold = cosine["verification"]["cosine"]["eer_threshold"]
    a, b = utt("2609", 1), utt("2609", 2)
    score, same = model.verify_files(a, b)
    assert same == (score > threshold)
    assert model.verify_files(a, b, threshold=score - 1e-3) == (score, True)
    assert model.verify_files(a, b, threshold=score + 1e-3) == (score, False)
    wavs = [torch.from_numpy(sf.read(f, dtype="float32")[0][:32000]) for f in (a, b)]
    scores, decisions = model.verify_batch(wavs[0][None], wavs[1][None], threshold=-1.0)
    assert scores.shape == (1,) and decisions.tolist() == [True]


def test_classify_file_ranks_training_speakers(model):
    weights = F.normalize(model.mods.classifier.weight, dim=-1)
    correct = 0
    for speaker in sorted(TRAIN_SPEAKERS):
        for i in range(3):
            top = model.classify_file(utt(speaker, i), topk=3)
            assert len(top) == 3 and {s for s, _ in top} <= set(TRAIN_SPEAKERS)
            assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
            cosines = weights @ model.encode_file(utt(speaker, i))
            best = model.hparams.label_encoder.ind2lab[int(cosines.argmax())]
            assert top[0][0] == best and abs(top[0][1] - float(cosines.max())) < 1e-5
            correct += top[0][0] == speaker
    assert correct / 15 > 1 / 5, f"top-1 {correct}/15 is not above chance"


def test_unreadable_audio_names_the_file(model, tmp_path):
    bad = tmp_path / "not-audio.wav"
    bad.write_text("this is not audio")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        model.encode_file(bad)
    with pytest.raises(FileNotFoundError, match="missing.flac"):
        model.verify_files(tmp_path / "missing.flac", utt("1688", 1))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_round_trip_through_a_local_stand_in(run, exported, tmp_path):
    """export.py --push to the stand-in Hub (HF_ENDPOINT), then from_hparams("user/repo") into
    an empty cache: the same files, the same embeddings, the token in no output."""
    wav = utt("2033", 3)
    with HubServer(token=TOKEN) as hub:
        out = tmp_path / "pushed"
        push = hub.push(run, out, "user/spk", str(tmp_path / "hf-push"), "--revision", "v1")
        assert listing(out) == listing(exported) | {"README.md": listing(out)["README.md"]}
        sent = [h.get("authorization") for m, _, h in hub.requests if m == "POST"]
        assert sent and all(a == f"Bearer {TOKEN}" for a in sent)

        code = (
            "import sys, torch\n"
            "from pretrained_interfaces.speaker.custom_interface import WavLMSpeakerInterface\n"
            "from speechbrain.utils.fetching import FetchConfig\n"
            "m = WavLMSpeakerInterface.from_hparams(source='user/spk', savedir=sys.argv[1],\n"
            "    fetch_config=FetchConfig(revision='v1'))\n"
            "torch.save(m.encode_file(sys.argv[2]), sys.argv[3])\n"
        )
        emb_file = tmp_path / "emb.pt"
        load_proc = hub.load(code, str(tmp_path / "hf-load"), tmp_path / "savedir", wav, emb_file)
        downloads = [p for m, p, _ in hub.requests if m == "GET" and "/resolve/v1/" in p]
        assert {p.rsplit("/", 1)[1] for p in downloads} >= {"hyperparams.yaml", "embedder.ckpt"}
    for text in (push.stdout, push.stderr, load_proc.stdout, load_proc.stderr):
        assert TOKEN not in text
    expected = load(exported).encode_file(wav)
    torch.testing.assert_close(torch.load(emb_file), expected, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------ errors ---
def test_missing_folder_is_one_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        WavLMSpeakerInterface.from_hparams(source=str(missing))
    with pytest.raises(FileNotFoundError, match="hyperparams.yaml"):
        export_speaker(run_folder=tmp_path / "no-such-run", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_weight_file_is_one_clear_error(exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "embedder.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="embedder.ckpt"):
        WavLMSpeakerInterface.from_hparams(source=str(broken))
    with pytest.raises(FileNotFoundError, match="embedder.ckpt"):
        load(broken)


def test_wrong_class_name_is_one_clear_error(exported):
    with pytest.raises(AttributeError, match="NoSuchInterface"):
        foreign_class(
            source=str(exported), pymodule_file="custom_interface.py", classname="NoSuchInterface"
        )


def test_no_network_leaves_the_folder_intact(exported):
    before = listing(exported)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(PublishError, match="intact") as err:
        push_folder(exported, "user/spk", token=TOKEN, endpoint=endpoint)
    assert TOKEN not in str(err.value) and endpoint in str(err.value)
    assert listing(exported) == before


def test_no_token_is_one_clear_error(exported, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    before = listing(exported)
    with HubServer(token=TOKEN) as hub:
        with pytest.raises(PublishError, match="HF_TOKEN"):
            push_folder(exported, "user/spk", endpoint=hub.url)
        assert hub.requests == []  # refused before any request
        with pytest.raises(PublishError, match="401|Unauthorized|credentials"):
            push_folder(exported, "user/spk", token="hf_wrong", endpoint=hub.url)
    assert listing(exported) == before


def test_export_refuses_to_overwrite_and_leaves_nothing_half_written(run, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_speaker(run_folder=run, out=out)
    assert listing(out) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()}
    # a run without a checkpoint fails after the checks: no folder, no temporary left
    no_ckpt = tmp_path / "no-ckpt"
    shutil.copytree(run, no_ckpt, ignore=shutil.ignore_patterns("CKPT+*"))
    text = (no_ckpt / "hyperparams.yaml").read_text().replace(str(run), str(no_ckpt))
    (no_ckpt / "hyperparams.yaml").write_text(text)
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        export_speaker(run_folder=no_ckpt, out=tmp_path / "never")
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never*"))
    # --overwrite never replaces a folder the export did not write: it names what is there
    with pytest.raises(FileExistsError, match="not a previous export.*keep.txt"):
        export_speaker(run_folder=run, out=out, overwrite=True)
    assert listing(out) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()}
    # a previous export is replaced as a whole
    previous = tmp_path / "previous"
    export_speaker(run_folder=run, out=previous)
    (previous / "embedder.ckpt").write_bytes(b"stale")
    export_speaker(run_folder=run, out=previous, overwrite=True)
    assert (previous / "embedder.ckpt").read_bytes() != b"stale"
    assert not list(tmp_path.glob(".previous*"))


def test_overwrite_never_deletes_the_run_or_what_holds_it(run, tmp_path):
    """Issue 22 items 1-2: `export.py RUN --out RUN --overwrite` deleted the training run, and
    `--out <folder holding RUN>` every run in it. Both refuse now (exit 1), and nothing moves."""
    before = listing(run.parent)
    for out in (run, run.parent, run / "exported"):
        assert main([str(run), "--out", str(out), "--overwrite"]) == 1
        with pytest.raises(FileExistsError, match="training run"):
            export_speaker(run_folder=run, out=out, overwrite=True)
    assert listing(run.parent) == before
    # the repository and the home folder are never replaced, whatever they hold
    for out, what in ((REPOSITORY, "this repository"), (Path.home(), "the home folder")):
        with pytest.raises(FileExistsError, match=what):
            check_output_target(out, run_folder=run, overwrite=True)
    # (a clone under /tmp shares that parent with pytest's run folder: either is named)
    with pytest.raises(FileExistsError, match="holds (this repository|the training run)"):
        check_output_target(REPOSITORY.parent, run_folder=run, overwrite=True)


def damage(path, how):
    """Breaks one file of a copied model folder as a bad download or a half-finished copy
    would: ``empty`` (a valid but empty state dict), ``shape`` (its first tensor one row
    longer), ``extra`` (an unexpected key), ``zero`` (0 bytes), ``half`` (cut in the middle)."""
    if how == "zero":
        path.write_bytes(b"")
    elif how == "half":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if how == "empty":
            state = {}
        elif how == "shape":
            key = next(k for k, v in state.items() if v.dim() > 0)
            state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
        else:
            state["not_a_parameter.weight"] = torch.zeros(3)
        torch.save(state, path)


@pytest.mark.parametrize(
    "name, how",
    [
        ("classifier.ckpt", "empty"),
        ("classifier.ckpt", "shape"),
        ("classifier.ckpt", "extra"),
        ("embedder.ckpt", "shape"),
        ("classifier.ckpt", "zero"),
        ("classifier.ckpt", "half"),
        ("embedder.ckpt", "half"),
        ("embedder.ckpt", "zero"),
        ("label_encoder.ckpt", "half"),
        ("label_encoder.ckpt", "zero"),
    ],
)
def test_damaged_or_mismatched_file_is_one_clear_error(exported_speaker, tmp_path, name, how):
    """A file that does not hold exactly the module's tensors (SpeechBrain's transfer would warn
    per key and keep random weights), or a truncated / empty one (a bare torch or KeyError
    before), is one error naming the file and the fix, through both ways of loading."""
    broken = tmp_path / "broken"
    shutil.copytree(exported_speaker, broken)
    damage(broken / name, how)
    message = rf"{re.escape(name)}.*(download it again|export it again)"
    with pytest.raises(ValueError, match=message):
        WavLMSpeakerInterface.from_hparams(source=str(broken))
    with pytest.raises(ValueError, match=message):
        load(broken)


@pytest.mark.parametrize("how", ["zero", "half"])
def test_cut_hyperparams_is_one_clear_error(exported_speaker, tmp_path, how):
    broken = tmp_path / "broken"
    shutil.copytree(exported_speaker, broken)
    damage(broken / "hyperparams.yaml", how)
    with pytest.raises(ValueError, match=r"hyperparams\.yaml.*(download it again)"):
        WavLMSpeakerInterface.from_hparams(source=str(broken))

"""Tests of sepid.data.mixture_corpus (make_mixtures), its script data_prep/make_mixtures.py and
sepid.data.mixtures (two-speaker mixtures, dynamic mixing)."""

import csv
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data_prep.make_mixtures import main as mixtures_main
from sepid.data import mixture_corpus as mm
from sepid.data.audio import AudioError
from sepid.data.folder import prepare_folder
from sepid.data.manifest import read_csv, write_csv
from sepid.data.mixture_corpus import make_mixtures
from sepid.data.mixtures import (
    MAX_PEAK,
    DistinctPairDrawer,
    DynamicMixingDataset,
    MixingOptions,
    SilentSourceError,
    Source,
    SpeakerPool,
    max_distinct_pairs,
    mix_sources,
    mixture_collate,
)
from sepid.data.schema import MIXTURE_COLUMNS

REPO = Path(__file__).resolve().parents[2]
LIBRI = REPO / "tests/samples/librispeech-mini/test-other"
RATE = 16000
N_MIX = {"train": 5, "valid": 4, "test": 4}
SPLIT_SPEAKERS = {"train": 4, "valid": 2, "test": 4}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Short clips (1.2 to 2.6 s) of the LibriSpeech sample, 10 speakers x 5 utterances, and
    their speaker manifest written by folder_prepare."""
    root = tmp_path_factory.mktemp("corpus")
    data = root / "data"
    rng = np.random.default_rng(0)
    for spk_dir in sorted(p for p in LIBRI.iterdir() if p.is_dir()):
        for k, flac in enumerate(sorted(spk_dir.glob("*.flac"))[:5]):
            sig, rate = sf.read(flac, dtype="float32")
            n = int(rng.uniform(1.2, 2.6) * rate)
            out = data / spk_dir.name / f"{spk_dir.name}-{k}.wav"
            out.parent.mkdir(parents=True, exist_ok=True)
            sf.write(out, sig[rate // 2 : rate // 2 + n], rate)
    prep = prepare_folder(
        data,
        root / "prep",
        trial_speakers=None,
        n_iden_enrol=0,
        n_iden_test=0,
        valid_ratio=0.0,
    )
    return data, Path(prep["train"])


def run(corpus, save_folder, **kwargs):
    data, manifest = corpus
    kwargs.setdefault("n_mix", N_MIX)
    kwargs.setdefault("split_speakers", SPLIT_SPEAKERS)
    return make_mixtures(manifest, data, save_folder, **kwargs)


def load(wav, root):
    assert wav.startswith("$data_root/")
    sig, rate = sf.read(wav.replace("$data_root", str(root)), dtype="float32")
    return sig, rate


def manifest_by_id(manifest):
    return {r["ID"]: r for r in read_csv(manifest)}


def rms_db(x):
    return 20 * np.log10(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def folder_bytes(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and p.name != "prep_options.json"
    }


@pytest.fixture(scope="module")
def mixed(corpus, tmp_path_factory):
    """One corpus with gains drawn in [-5, 5] dB."""
    save = tmp_path_factory.mktemp("mixed") / "mix"
    outputs = run(corpus, save, gain_db_range=(-5.0, 5.0))
    return save, outputs


def test_outputs_columns_and_speaker_splits(corpus, mixed):
    save, outputs = mixed
    assert set(outputs) == {"train", "valid", "test", "speakers", "prep_options"}
    speakers = json.loads((save / "speakers.json").read_text())
    everyone = sorted({r["spk_id"] for r in read_csv(corpus[1])})
    assert speakers["train"] == everyone[:4]
    assert speakers["valid"] == everyone[4:6]
    assert speakers["test"] == everyone[6:10]
    utts = manifest_by_id(corpus[1])
    for split, n in N_MIX.items():
        with open(outputs[split], newline="") as f:
            assert next(csv.reader(f)) == list(MIXTURE_COLUMNS)
        rows = read_csv(outputs[split])
        assert len(rows) == n
        for row in rows:
            assert row["s1_spk"] != row["s2_spk"]
            for s in ("s1", "s2"):
                assert row[f"{s}_spk"] in speakers[split]
                assert int(row[f"{s}_class"]) == speakers[split].index(row[f"{s}_spk"])
                assert utts[row[f"{s}_utt"]]["spk_id"] == row[f"{s}_spk"]
            assert row["mix_wav"] == f"$data_root/{split}/mix/{row['ID']}.wav"
    assert not set(speakers["train"]) & set(speakers["test"])
    assert not set(speakers["valid"]) & (set(speakers["train"]) | set(speakers["test"]))


def test_mix_is_sum_no_clipping_gain_and_min_length(corpus, mixed):
    save, outputs = mixed
    utts = manifest_by_id(corpus[1])
    gains = []
    for split in N_MIX:
        for row in read_csv(outputs[split]):
            mix, rate = load(row["mix_wav"], save)
            s1, _ = load(row["s1_wav"], save)
            s2, _ = load(row["s2_wav"], save)
            assert rate == RATE
            assert sf.info(row["mix_wav"].replace("$data_root", str(save))).subtype == "FLOAT"
            assert mix.shape == s1.shape == s2.shape
            assert np.max(np.abs(mix - (s1 + s2))) < 1e-6
            assert max(np.abs(mix).max(), np.abs(s1).max(), np.abs(s2).max()) <= 1.0
            gain = float(row["gain_db"])
            assert -5.0 <= gain <= 5.0
            assert rms_db(s2) - rms_db(s1) == pytest.approx(gain, abs=1e-3)
            gains.append(gain)
            # "min": the shorter source's length
            n1 = round(float(utts[row["s1_utt"]]["duration"]) * RATE)
            n2 = round(float(utts[row["s2_utt"]]["duration"]) * RATE)
            assert abs(mix.shape[0] - min(n1, n2)) <= 2
            assert float(row["duration"]) == pytest.approx(mix.shape[0] / RATE, abs=1e-4)
    assert len(set(gains)) > 1


def test_valid_from_held_out_train_utterances(corpus, tmp_path):
    outputs = run(corpus, tmp_path / "mix", split_speakers={"train": 5, "valid": 0, "test": 5})
    speakers = json.loads(Path(outputs["speakers"]).read_text())
    assert speakers["valid"] == speakers["train"]
    assert not set(speakers["train"]) & set(speakers["test"])
    train_utts = {r[k] for r in read_csv(outputs["train"]) for k in ("s1_utt", "s2_utt")}
    valid_utts = {r[k] for r in read_csv(outputs["valid"]) for k in ("s1_utt", "s2_utt")}
    assert valid_utts and not train_utts & valid_utts
    # the dynamic-mixing train set leaves the same utterances out
    data, manifest = corpus
    ds = DynamicMixingDataset.for_split(
        "train", manifest, data, 4, split_speakers={"train": 5, "valid": 0, "test": 5}
    )
    drawable = {u.id for us in ds.pool.utts.values() for u in us}
    assert not drawable & valid_utts
    assert ds.speakers == speakers["train"]


def test_reproducible_and_seed_dependent(corpus, mixed, tmp_path):
    save, _ = mixed
    run(corpus, tmp_path / "same", gain_db_range=(-5.0, 5.0))
    assert folder_bytes(tmp_path / "same") == folder_bytes(save)
    run(corpus, tmp_path / "other", gain_db_range=(-5.0, 5.0), seed=99)
    assert (tmp_path / "other/train.csv").read_bytes() != (save / "train.csv").read_bytes()


def _pool(sizes):
    """A pool of speakers ``s0, s1, ...`` with ``sizes[k]`` utterances each (no audio needed)."""
    utts = {
        f"s{k}": [Source(f"s{k}-{i}", f"s{k}-{i}.wav", f"s{k}", 2.0) for i in range(n)]
        for k, n in enumerate(sizes)
    }
    return SpeakerPool(sorted(utts), utts)


def _pair_stats(pairs):
    unordered = [frozenset((a.id, b.id)) for a, b in pairs]
    uses = {}
    for a, b in pairs:
        for u in (a, b):
            uses[u.id] = uses.get(u.id, 0) + 1
    return unordered, uses


@pytest.mark.parametrize(
    "sizes,n",
    [
        ((2,) * 10, 180),  # the demo: every pair of 10 speakers x 2 utterances
        ((2,) * 10, 170),
        ((5,) * 4, 40),
        ((5,) * 4, 149),
        ((2, 3, 4), 20),
        ((3, 7, 9, 2), 60),
        ((30,) * 50, 1000),
    ],
)
@pytest.mark.parametrize("seed", range(5))
def test_distinct_pairs_and_balanced_reuse(sizes, n, seed):
    pool = _pool(sizes)
    drawer = DistinctPairDrawer(np.random.default_rng([seed, 2]), pool, n)
    pairs = [drawer[i] for i in range(len(drawer))]
    unordered, uses = _pair_stats(pairs)
    assert len(pairs) == len(set(unordered)) == n  # no pair twice, swapped order included
    assert all(a.spk != b.spk for a, b in pairs)
    cap = -(-2 * n // sum(sizes))
    assert max(uses.values()) <= cap == drawer.reuse_cap
    if sizes == (2,) * 10:
        assert max_distinct_pairs(pool) == (20**2 - 10 * 2**2) // 2 == 180
    assert {a.id < b.id for a, b in pairs} == {True, False}  # either utterance may be s1


def test_replaced_pair_is_not_drawn_again():
    pool = _pool((3, 3))  # 9 distinct pairs, cap ceil(2 x 4 / 6) = 2
    drawer = DistinctPairDrawer(np.random.default_rng(0), pool, 4)
    first = drawer[0]
    written = drawer[1]
    drawer.replace(2)  # e.g. a silent source: its quota back, the pair never again
    pairs = [drawer[i] for i in range(4)]
    assert pairs[0] == first and pairs[1] == written  # written pairs are kept
    unordered, uses = _pair_stats(pairs)
    assert len(set(unordered)) == 4 and max(uses.values()) <= 2


def test_replaced_pair_is_banned():
    pool = _pool((2, 2))  # 4 distinct pairs, cap ceil(2 x 2 / 4) = 1: a perfect matching
    drawer = DistinctPairDrawer(np.random.default_rng(0), pool, 2)
    drawer[0], drawer[1]  # pair 0 written: the only pair left for pair 1's quota is itself
    with pytest.raises(ValueError, match="no new pair of utterances is left"):
        drawer.replace(1)


def test_unbalanced_pool_cannot_balance_reuse():
    # speaker s0 holds 10 of the 11 utterances: 10 distinct pairs, all through s1's one
    # utterance, which the cap ceil(2 x 10 / 11) = 2 allows in 2 mixtures only
    with pytest.raises(ValueError, match=r"split x: no new pair .* at most 2 mixtures"):
        DistinctPairDrawer(np.random.default_rng(0), _pool((10, 1)), 10, where="split x")
    # a speaker with 500 of 540 utterances: at most 2240 pairs fit under the cap of 56, said at
    # once (not after a search through every stuck state)
    with pytest.raises(ValueError, match=r"at most 2240 fit under that cap"):
        DistinctPairDrawer(np.random.default_rng(0), _pool((500, 20, 20)), 15000)


def test_written_split_has_distinct_balanced_pairs(corpus, tmp_path):
    # 4 test speakers x 5 utterances: at most (20^2 - 4 x 5^2) / 2 = 150 distinct pairs
    outputs = run(corpus, tmp_path / "mix", n_mix={"test": 40})
    rows = read_csv(outputs["test"])
    unordered = [frozenset((r["s1_utt"], r["s2_utt"])) for r in rows]
    assert len(rows) == 40 and len(set(unordered)) == 40
    uses = {}
    for r in rows:
        for key in ("s1_utt", "s2_utt"):
            uses[r[key]] = uses.get(r[key], 0) + 1
    assert max(uses.values()) <= 4  # ceil(2 x 40 / 20)
    assert len(uses) == 20  # and every utterance is used


def test_more_mixtures_than_distinct_pairs(corpus, tmp_path, caplog):
    with pytest.raises(ValueError, match="make at most 150 distinct pairs.*Ask for at most 150"):
        run(corpus, tmp_path / "mix", n_mix={"test": 151})
    assert not (tmp_path / "mix").exists()  # refused before anything is written
    # 2 test speakers x 5 utterances: 25 pairs; allow_fewer makes those 25 and warns
    with caplog.at_level(logging.WARNING, logger="sepid.data.mixtures"):
        outputs = run(
            corpus,
            tmp_path / "fewer",
            n_mix={"test": 30},
            split_speakers={"train": 4, "valid": 2, "test": 2},
            allow_fewer=True,
        )
    assert "at most 25 distinct pairs" in caplog.text and "Making 25" in caplog.text
    rows = read_csv(outputs["test"])
    assert len({frozenset((r["s1_utt"], r["s2_utt"])) for r in rows}) == len(rows) == 25


def test_max_length_mode_pads_the_shorter(corpus, tmp_path):
    outputs = run(corpus, tmp_path / "mix", length_mode="max", n_mix={"train": 4})
    assert set(outputs) == {"train", "speakers", "prep_options"}
    utts = manifest_by_id(corpus[1])
    for row in read_csv(outputs["train"]):
        mix, _ = load(row["mix_wav"], tmp_path / "mix")
        s1, _ = load(row["s1_wav"], tmp_path / "mix")
        s2, _ = load(row["s2_wav"], tmp_path / "mix")
        n1 = round(float(utts[row["s1_utt"]]["duration"]) * RATE)
        n2 = round(float(utts[row["s2_utt"]]["duration"]) * RATE)
        assert abs(mix.shape[0] - max(n1, n2)) <= 2
        shorter = s1 if n1 < n2 else s2
        assert np.all(shorter[min(n1, n2) + 2 :] == 0)
        assert np.max(np.abs(mix - (s1 + s2))) < 1e-6


def test_8khz_and_librimix_levels(corpus, tmp_path):
    outputs = run(corpus, tmp_path / "mix", sample_rate=8000, loudness="librimix")
    for row in read_csv(outputs["test"]):
        mix, rate = load(row["mix_wav"], tmp_path / "mix")
        s1, _ = load(row["s1_wav"], tmp_path / "mix")
        s2, _ = load(row["s2_wav"], tmp_path / "mix")
        assert rate == 8000
        assert float(row["duration"]) == pytest.approx(mix.shape[0] / 8000, abs=1e-4)
        gain = float(row["gain_db"])
        assert -8.0 <= gain <= 8.0
        assert rms_db(s2) - rms_db(s1) == pytest.approx(gain, abs=1e-3)
        assert rms_db(s1) <= -25.0 + 1e-3
        assert np.max(np.abs(mix - (s1 + s2))) < 1e-6
    with pytest.raises(ValueError, match="librimix"):
        run(corpus, tmp_path / "bad", loudness="librimix", gain_db_range=(-5, 5))


def test_rerun_skips_and_other_options_delete_nothing_without_overwrite(corpus, tmp_path, caplog):
    save = tmp_path / "mix"
    run(corpus, save)
    csv_path = save / "train.csv"
    wav = save / "train/mix/train_000000.wav"
    before = (csv_path.stat().st_mtime_ns, wav.stat().st_mtime_ns)
    with caplog.at_level(logging.INFO):
        run(corpus, save)
    assert "same options: skipping" in caplog.text
    assert (csv_path.stat().st_mtime_ns, wav.stat().st_mtime_ns) == before
    written = folder_bytes(save)
    options = (save / "prep_options.json").read_bytes()
    # other options: one error naming each difference (old -> new) and the ways out
    with pytest.raises(FileExistsError) as err:
        run(corpus, save, n_mix={"train": 2, "test": 4}, seed=7)
    message = str(err.value)
    for part in (
        str(save),
        "n_mix.train: 5 -> 2",
        "n_mix.valid: 4 -> 0",
        "seed: 1234 -> 7",
        "Nothing was deleted",
        "--overwrite",
        "another save_folder",
    ):
        assert part in message
    assert "n_mix.test" not in message  # unchanged options are not listed
    assert folder_bytes(save) == written
    assert (save / "prep_options.json").read_bytes() == options
    # with overwrite: the old mixtures are replaced (logged)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run(corpus, save, n_mix={"train": 2, "test": 2}, overwrite=True)
    assert "n_mix.train: 5 -> 2" in caplog.text and "deleting them (overwrite=True)" in caplog.text
    assert len(read_csv(csv_path)) == 2
    assert not (save / "valid.csv").exists() and not (save / "valid/mix").exists()
    assert sorted(p.name for p in (save / "train/mix").iterdir()) == [
        "train_000000.wav",
        "train_000001.wav",
    ]
    run(corpus, save, n_mix={"train": 2, "test": 2})  # the new options are now the folder's


def interrupt_at_the_test_split(monkeypatch):
    """Makes make_mixtures stop (Ctrl-C) when it reaches the test split; returns the real
    split writer, to put back."""
    real = mm._make_split

    def failing(split, *args, **kwargs):
        if split == "test":
            raise KeyboardInterrupt
        return real(split, *args, **kwargs)

    monkeypatch.setattr(mm, "_make_split", failing)
    return real


def test_interrupted_run_with_other_options_is_kept(corpus, tmp_path, monkeypatch):
    save = tmp_path / "mix"
    real = interrupt_at_the_test_split(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run(corpus, save)
    monkeypatch.setattr(mm, "_make_split", real)
    written = folder_bytes(save)
    with pytest.raises(FileExistsError, match=r"interrupted make_mixtures run.*seed: 1234 -> 3"):
        run(corpus, save, seed=3)
    assert folder_bytes(save) == written
    run(corpus, save)  # the same options resume it
    run(corpus, tmp_path / "clean")
    assert folder_bytes(save) == folder_bytes(tmp_path / "clean")


def test_interrupted_run_resumes(corpus, tmp_path, monkeypatch):
    save = tmp_path / "mix"
    real = interrupt_at_the_test_split(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run(corpus, save)
    assert (save / "train.csv").is_file() and not (save / "prep_options.json").exists()
    mtime = (save / "train.csv").stat().st_mtime_ns
    monkeypatch.setattr(mm, "_make_split", real)
    outputs = run(corpus, save)
    assert (save / "train.csv").stat().st_mtime_ns == mtime
    assert len(read_csv(outputs["test"])) == N_MIX["test"]
    assert (save / "prep_options.json").is_file()
    assert not (save / mm.IN_PROGRESS).exists()


KILL_MID_WRITE = """
import os, signal, sys
from pathlib import Path
import sepid.data.manifest
from sepid.data.mixture_corpus import make_mixtures

real_replace, calls = os.replace, {"n": 0}

def replace_then_die(src, dst):
    # after the in-progress marker, the third audio file of the run is fully written to its
    # temporary file: kill -9 there
    calls["n"] += 1
    if calls["n"] == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

sepid.data.manifest.os = type("os_proxy", (), {"__getattr__": lambda self, n: getattr(os, n),
                                          "replace": staticmethod(replace_then_die)})()
manifest, data, save = sys.argv[1:4]
make_mixtures(
    manifest, data, save, n_mix={"train": 2}, split_speakers={"train": 4, "valid": 2, "test": 4}
)
"""


def test_killed_mid_write_leaves_no_temporary_files_after_rerun(corpus, tmp_path, caplog):
    data, manifest = corpus
    save = tmp_path / "mix"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_MID_WRITE, str(manifest), str(data), str(save)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p for p in save.rglob(".*.tmp")]
    assert [p.parent.name for p in leftovers] == ["s2"], leftovers
    assert re.fullmatch(r"\.train_000000\.wav\.[a-z0-9_]{8}\.tmp", leftovers[0].name)
    # a file that only looks alike is not this tool's: kept
    (save / ".notes.txt.abcdefgh.tmp").write_text("not mine")
    with caplog.at_level(logging.INFO):
        run(corpus, save, n_mix={"train": 2})
    assert "Removed 1 temporary file(s) left by an interrupted make_mixtures run" in caplog.text
    assert [p.name for p in save.rglob(".*.tmp")] == [".notes.txt.abcdefgh.tmp"]
    (save / ".notes.txt.abcdefgh.tmp").unlink()
    run(corpus, tmp_path / "clean", n_mix={"train": 2})
    assert folder_bytes(save) == folder_bytes(tmp_path / "clean")


def test_foreign_folder_refused_unless_overwrite(corpus, tmp_path):
    save = tmp_path / "mine"
    save.mkdir()
    (save / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        run(corpus, save)
    assert sorted(p.name for p in save.iterdir()) == ["notes.txt"]
    # a speaker-manifest folder (prep_options.json of another prep) is foreign too
    with pytest.raises(FileExistsError):
        run(corpus, corpus[1].parent)
    run(corpus, save, n_mix={"train": 2}, overwrite=True)
    assert (save / "notes.txt").read_text() == "precious"
    assert len(read_csv(save / "train.csv")) == 2
    run(corpus, save, n_mix={"train": 2})  # now its own folder: no overwrite needed
    with pytest.raises(FileExistsError, match="n_mix.train: 2 -> 3"):
        run(corpus, save, n_mix={"train": 3})
    run(corpus, save, n_mix={"train": 3}, overwrite=True)
    assert (save / "notes.txt").read_text() == "precious"
    assert len(read_csv(save / "train.csv")) == 3


def test_bad_speaker_splits(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"Split 'train' of manifest .*train\.csv.*two"):
        run(corpus, tmp_path / "a", split_speakers={"train": 1, "valid": 2, "test": 2})
    with pytest.raises(ValueError, match="only 10"):
        run(corpus, tmp_path / "b", split_speakers={"train": 8, "valid": 0, "test": 8})
    spks = sorted({r["spk_id"] for r in read_csv(corpus[1])})
    with pytest.raises(ValueError, match="both the train and the test"):
        run(corpus, tmp_path / "c", split_speakers={"train": spks[:3], "test": spks[2:5]})
    # explicit lists and counts mix: counts take the next unassigned speakers (valid: 1
    # held-out utterance of each of the 3 train speakers, 3 distinct pairs)
    split_speakers = {"train": 3, "valid": 0, "test": spks[:2]}
    with pytest.raises(ValueError, match="Split 'valid' .* at most 3 distinct pairs"):
        run(corpus, tmp_path / "d", split_speakers=split_speakers)
    n_mix = {"train": 5, "valid": 3, "test": 4}
    outputs = run(corpus, tmp_path / "d", split_speakers=split_speakers, n_mix=n_mix)
    speakers = json.loads(Path(outputs["speakers"]).read_text())
    assert speakers["test"] == spks[:2] and speakers["train"] == spks[2:5]


def test_bad_manifests(corpus, tmp_path):
    data, manifest = corpus
    with pytest.raises(FileNotFoundError, match="Manifest not found"):
        make_mixtures(tmp_path / "none.csv", data, tmp_path / "a")
    rows = read_csv(manifest)
    no_spk = tmp_path / "no_spk.csv"
    write_csv(
        no_spk,
        [{k: r[k] for k in ("ID", "duration", "wav")} for r in rows],
        ["ID", "duration", "wav"],
    )
    with pytest.raises(ValueError, match=r"lacks column.*spk_id"):
        make_mixtures(no_spk, data, tmp_path / "b")
    # an unreadable source: the error names it
    bad_dir = tmp_path / "bad_data"
    shutil.copytree(data / rows[0]["spk_id"], bad_dir / "A")
    (bad_dir / "B").mkdir()
    (bad_dir / "B/B-0.wav").write_bytes(b"not audio at all" * 2000)
    bad = [
        {
            "ID": "A",
            "duration": 2.0,
            "wav": f"$data_root/A/{Path(rows[0]['wav']).name}",
            "spk_id": "A",
        },
        {"ID": "B", "duration": 2.0, "wav": "$data_root/B/B-0.wav", "spk_id": "B"},
    ]
    write_csv(tmp_path / "bad.csv", bad, ["ID", "duration", "wav", "spk_id"])
    with pytest.raises(AudioError, match="B-0.wav"):
        make_mixtures(
            tmp_path / "bad.csv",
            bad_dir,
            tmp_path / "c",
            n_mix={"test": 1},
            split_speakers={"train": 0, "valid": 0, "test": 2},
        )


def test_mix_sources_scaling_and_silence():
    t = torch.linspace(0, 1, 8000)
    s1, s2 = torch.sin(2 * torch.pi * 50 * t) * 3, torch.sin(2 * torch.pi * 50 * t) * 2
    mix, o1, o2 = mix_sources(s1, s2[:6000], gain_db=0.0, length_mode="min", level_db=0.0)
    assert mix.dtype == torch.float32 and mix.shape == (6000,)
    assert torch.equal(mix, o1 + o2)
    assert max(mix.abs().max(), o1.abs().max(), o2.abs().max()) <= MAX_PEAK + 1e-6
    assert mix.abs().max() == pytest.approx(MAX_PEAK, rel=1e-5)
    _, o1, o2 = mix_sources(s1, s2[:6000], gain_db=0.0, length_mode="max")
    assert o2.shape == (8000,) and torch.all(o2[6000:] == 0)
    with pytest.raises(SilentSourceError):
        mix_sources(s1, torch.zeros(100))


def test_dynamic_mixing_dataset(corpus):
    data, manifest = corpus
    spks = sorted({r["spk_id"] for r in read_csv(manifest)})[:4]
    ds = DynamicMixingDataset(
        manifest,
        data,
        spks,
        n_mix=6,
        segment_seconds=1.0,
        mixing=MixingOptions(gain_db_range=(-3.0, 3.0), seed=7),
    )
    assert len(ds) == 6 and ds.speakers == spks
    first = [ds[i] for i in range(3)]
    again = ds[1]
    for key in ("mix_sig", "s1_sig", "s2_sig", "gain_db"):
        assert torch.equal(again[key], first[1][key])
    for item in first:
        assert item["s1_spk"] != item["s2_spk"]
        assert item["s1_class"].item() == spks.index(item["s1_spk"])
        assert item["mix_sig"].dtype == torch.float32
        assert item["mix_sig"].shape == item["s1_sig"].shape == item["s2_sig"].shape == (RATE,)
        assert torch.equal(item["mix_sig"], item["s1_sig"] + item["s2_sig"])
        assert item["mix_sig"].abs().max() <= 1.0
        ratio = rms_db(item["s2_sig"]) - rms_db(item["s1_sig"])
        assert ratio == pytest.approx(item["gain_db"].item(), abs=1e-3)
    ds.set_epoch(1)
    other = ds[1]
    assert not torch.equal(other["mix_sig"], first[1]["mix_sig"])
    assert other["id"] != first[1]["id"]
    ds.set_epoch(0)
    assert torch.equal(ds[1]["mix_sig"], first[1]["mix_sig"])
    # whole utterances, "max" mode: items of different lengths, then a padded batch
    whole = DynamicMixingDataset(
        manifest, data, spks, n_mix=3, mixing=MixingOptions(length_mode="max"), sample_rate=8000
    )
    batch = mixture_collate([whole[i] for i in range(3)])
    assert batch.mix_sig.data.shape[0] == 3
    assert batch.mix_sig.lengths.max() == 1.0 and torch.all(batch.mix_sig.lengths > 0)
    assert batch.s1_class.shape == (3,) and batch.s1_class.dtype == torch.long
    assert batch.gain_db.shape == (3,)
    assert len(batch.id) == 3 and len(batch.s1_spk) == 3
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=mixture_collate)
    b = next(iter(loader))
    assert b.mix_sig.data.shape == (3, RATE)
    assert torch.equal(b.mix_sig.data, b.s1_sig.data + b.s2_sig.data)
    with pytest.raises(ValueError, match="two different speakers"):
        DynamicMixingDataset(manifest, data, spks[:1], n_mix=2)


def test_cli(corpus, tmp_path):
    data, manifest = corpus
    save = tmp_path / "cli"
    args = [
        "--manifest", str(manifest),
        "--data_folder", str(data),
        "--save_folder", str(save),
        "--n_train", "2", "--n_valid", "0",
        "--train_speakers", "3", "--valid_speakers", "0", "--test_speakers", "3",
        "--gain_db_range", "-2", "2",
        "--seed", "5",
    ]  # fmt: skip
    outputs = mixtures_main(args + ["--n_test", "2"])
    assert set(outputs) == {"train", "test", "speakers", "prep_options"}
    options = json.loads((save / "prep_options.json").read_text())
    assert options["gain_db_range"] == [-2.0, 2.0] and options["seed"] == 5
    assert options["split_speakers"] == {"test": 3, "train": 3, "valid": 0}
    assert os.path.isfile(save / "test/s2/test_000001.wav")
    with pytest.raises(FileExistsError, match="n_mix.test: 2 -> 1"):
        mixtures_main(args + ["--n_test", "1"])
    assert len(read_csv(save / "test.csv")) == 2
    mixtures_main(args + ["--n_test", "1", "--overwrite"])
    assert len(read_csv(save / "test.csv")) == 1

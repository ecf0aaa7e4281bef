"""Tests of the speaker data prep (sepid.data.voxceleb, sepid.data.folder, sepid.data.prep,
sepid.data.speakers) and its scripts (data_prep/voxceleb_prepare.py)."""

import concurrent.futures
import csv
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data_prep.voxceleb_prepare import main as voxceleb_main
from sepid.data import voxceleb
from sepid.data.folder import prepare_folder
from sepid.data.manifest import read_csv, write_csv
from sepid.data.prep import generate_trials, split_speaker_utterances
from sepid.data.schema import SEGMENT_COLUMNS, TRIAL_COLUMNS
from sepid.data.schema import UTTERANCE_COLUMNS as UTT_COLUMNS
from sepid.data.speakers import select_speakers
from sepid.data.voxceleb import prepare_voxceleb
from tests.helpers import run_python

REPO = Path(__file__).resolve().parents[2]
LIBRI = REPO / "tests/samples/librispeech-mini/test-other"
SHARED_FLAT = Path("/work/shared/data/librispeech-mini/train-clean-100")
SPLIT_CSVS = ["train.csv", "valid.csv", "iden_enrol.csv", "iden_test.csv"]
VOX_SPEAKERS = ["id10001", "id10002", "id10003", "id10004"]
RATE = 16000


@pytest.fixture(scope="module")
def clips():
    """Eight 1.5 s clips cut from the LibriSpeech sample."""
    files = sorted(LIBRI.glob("*/*.flac"))[::12][:8]
    return [sf.read(f, dtype="float32")[0][: int(1.5 * RATE)] for f in files]


def make_vox(root, clips, speakers=VOX_SPEAKERS, videos=2, utts=4, sub="wav", ext=".wav"):
    """Fake VoxCeleb tree ``root/sub/<spk>/vid<v>/<000u>.wav``; returns the speaker root."""
    spk_root = root / sub if sub else root
    k = 0
    for spk in speakers:
        for v in range(videos):
            folder = spk_root / spk / f"vid{v}"
            folder.mkdir(parents=True, exist_ok=True)
            for u in range(1, utts + 1):
                sf.write(folder / f"{u:05d}{ext}", clips[k % len(clips)], RATE, format="WAV")
                k += 1
    return spk_root


def write_trials(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


VOX_TRIALS = [
    "1 id10003/vid0/00001.wav id10003/vid1/00002.wav",
    "0 id10003/vid0/00001.wav id10004/vid0/00003.wav",
    "1 id10004/vid1/00004.wav id10004/vid0/00001.wav",
    "0 id10004/vid1/00004.wav id10003/vid1/00003.wav",
]


@pytest.fixture
def vox(tmp_path, clips):
    data = tmp_path / "vox1"
    make_vox(data, clips)
    trials = write_trials(tmp_path / "veri_test2.txt", VOX_TRIALS)
    return data, trials


def resolve(wav, data_folder):
    assert wav.startswith("$data_root/")
    return Path(wav.replace("$data_root", str(data_folder), 1))


def read_all(save_folder):
    return {name: Path(save_folder, name).read_text() for name in sorted(os.listdir(save_folder))}


def ids(save_folder, name):
    return [row["ID"] for row in read_csv(Path(save_folder) / name, UTT_COLUMNS)]


# ---------------------------------------------------------------------------------- VoxCeleb


def test_voxceleb_manifests(vox, tmp_path):
    data, trials = vox
    out = prepare_voxceleb(data, tmp_path / "save", verification_file=trials)
    assert set(out) == set(SPLIT_CSVS_KEYS) | {"veri_trials", "veri_utts", "prep_options"}
    for key in ["train", "valid", "iden_enrol", "iden_test", "veri_utts"]:
        with open(out[key]) as f:
            expected = SEGMENT_COLUMNS if key in ("train", "valid") else UTT_COLUMNS
            assert next(csv.reader(f)) == list(expected)
        for row in read_csv(out[key]):
            assert resolve(row["wav"], data).is_file()
            assert row["wav"].startswith("$data_root/wav/")
            spk, video, stem = row["ID"].split("--")
            assert row["spk_id"] == spk
            assert row["wav"].endswith(f"{spk}/{video}/{stem}.wav")
            assert abs(float(row["duration"]) - 1.5) < 1e-3
    trial_rows = read_csv(out["veri_trials"], TRIAL_COLUMNS)
    assert [(r["label"], r["enrol"], r["test"]) for r in trial_rows][:2] == [
        ("1", "id10003--vid0--00001", "id10003--vid1--00002"),
        ("0", "id10003--vid0--00001", "id10004--vid0--00003"),
    ]
    veri = ids(tmp_path / "save", "veri_utts.csv")
    assert len(veri) == len(set(veri)) == 6
    assert {r["enrol"] for r in trial_rows} | {r["test"] for r in trial_rows} == set(veri)
    all_ids = [
        i
        for name in ["train.csv", "valid.csv", "iden_test.csv"]
        for i in ids(tmp_path / "save", name)
    ]
    assert len(all_ids) == len(set(all_ids)) == 32
    assert not (tmp_path / "save" / "bad_files.txt").exists()


SPLIT_CSVS_KEYS = ["train", "valid", "iden_enrol", "iden_test"]


def test_voxceleb_splits(vox, tmp_path):
    data, trials = vox
    a = tmp_path / "a"
    prepare_voxceleb(data, a, verification_file=trials)
    train, valid = set(ids(a, "train.csv")), set(ids(a, "valid.csv"))
    enrol, test = set(ids(a, "iden_enrol.csv")), set(ids(a, "iden_test.csv"))
    assert not test & (train | valid) and not train & valid
    assert enrol <= train
    for spk in VOX_SPEAKERS:  # 8 utts: 2 test, round(0.1 * 6) = 1 valid, 5 train, 3 enrol
        assert sum(i.startswith(spk) for i in test) == 2
        assert sum(i.startswith(spk) for i in valid) == 1
        assert sum(i.startswith(spk) for i in enrol) == 3
    # deterministic: same options elsewhere -> identical files; another seed -> other split
    b = tmp_path / "b"
    prepare_voxceleb(data, b, verification_file=trials)
    assert {k: v for k, v in read_all(a).items() if k != "prep_options.json"} == {
        k: v for k, v in read_all(b).items() if k != "prep_options.json"
    }
    c = tmp_path / "c"
    prepare_voxceleb(data, c, verification_file=trials, seed=99)
    assert read_all(a)["iden_test.csv"] != read_all(c)["iden_test.csv"]


def test_voxceleb_speaker_selection(vox, tmp_path):
    data, _ = vox

    def spks(save):
        return sorted({r["spk_id"] for r in read_csv(Path(save) / "train.csv")})

    prepare_voxceleb(data, tmp_path / "n", speakers=2)
    assert spks(tmp_path / "n") == ["id10001", "id10002"]
    prepare_voxceleb(data, tmp_path / "l", speakers=["id10004", "id10002"])
    assert spks(tmp_path / "l") == ["id10002", "id10004"]
    spk_file = tmp_path / "spk.txt"
    spk_file.write_text("# chosen\nid10003\n\nid10001\n")
    prepare_voxceleb(data, tmp_path / "f", speakers=str(spk_file))
    assert spks(tmp_path / "f") == ["id10001", "id10003"]
    with pytest.raises(ValueError, match="id99999"):
        prepare_voxceleb(data, tmp_path / "u", speakers=["id10001", "id99999"])
    with pytest.raises(ValueError, match="only 4"):
        prepare_voxceleb(data, tmp_path / "big", speakers=10)


def test_voxceleb_exclude_verification_speakers(vox, tmp_path):
    data, trials = vox
    out = prepare_voxceleb(
        data, tmp_path / "s", verification_file=trials, exclude_verification_speakers=True
    )
    assert {r["spk_id"] for r in read_csv(out["train"])} == {"id10001", "id10002"}
    assert len(read_csv(out["veri_trials"])) == 4
    out = prepare_voxceleb(
        data,
        tmp_path / "n",
        speakers=1,
        verification_file=trials,
        exclude_verification_speakers=True,
    )
    assert {r["spk_id"] for r in read_csv(out["train"])} == {"id10001"}


def test_voxceleb_idempotent(vox, tmp_path, caplog):
    data, trials = vox
    save = tmp_path / "save"
    prepare_voxceleb(data, save, verification_file=trials)
    mtimes = {p.name: p.stat().st_mtime_ns for p in save.iterdir()}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        prepare_voxceleb(data, save, verification_file=trials)
    assert "already done" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in save.iterdir()} == mtimes
    caplog.clear()
    with caplog.at_level(logging.INFO):
        prepare_voxceleb(data, save, verification_file=trials, seed=7)
    assert "options changed" in caplog.text
    assert (save / "train.csv").stat().st_mtime_ns != mtimes["train.csv"]
    # a removed output or a changed trial list also reruns
    (save / "valid.csv").unlink()
    prepare_voxceleb(data, save, verification_file=trials, seed=7)
    assert (save / "valid.csv").is_file()
    write_trials(trials, VOX_TRIALS[:2])
    prepare_voxceleb(data, save, verification_file=trials, seed=7)
    assert len(read_csv(save / "veri_trials.csv")) == 2
    assert not [p for p in save.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_write_csv_is_atomic(tmp_path):
    path = tmp_path / "m.csv"
    write_csv(path, [{"ID": "a", "duration": 1.0, "wav": "x", "spk_id": "s"}], UTT_COLUMNS)
    before = path.read_text()
    with pytest.raises(ValueError):
        write_csv(path, [{"ID": "b", "bogus": 1}], UTT_COLUMNS)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["m.csv"]


def test_write_csv_streams_rows_and_stays_atomic(tmp_path):
    """Rows are written as an iterable yields them (a 550k-trial scores file is never built in
    memory); a failure part-way leaves the previous file whole and no temporary file."""
    path = tmp_path / "m.csv"
    row = {"ID": "a", "duration": 1.0, "wav": "x", "spk_id": "s"}
    written = []

    def rows(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("stopped")
            written.append(i)
            yield {**row, "ID": f"u{i}"}

    write_csv(path, rows(3), UTT_COLUMNS)
    assert [r["ID"] for r in read_csv(path)] == ["u0", "u1", "u2"]
    before = path.read_text()
    written.clear()
    with pytest.raises(RuntimeError, match="stopped"):
        write_csv(path, rows(5, fail_at=2), UTT_COLUMNS)
    assert written == [0, 1]  # consumed lazily, up to the failure
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["m.csv"]


def test_voxceleb_cli(vox, tmp_path):
    data, trials = vox
    save = tmp_path / "cli"
    voxceleb_main(
        ["--data_folder", str(data), "--save_folder", str(save), "--speakers", "id10001,id10003"]
        + ["--verification_file", str(trials), "--n_iden_test", "1", "--valid_ratio", "0"]
    )
    assert {r["spk_id"] for r in read_csv(save / "train.csv")} == {"id10001", "id10003"}
    assert len(ids(save, "valid.csv")) == 0 and len(ids(save, "iden_test.csv")) == 2
    # also runs as a script from the repo root
    save2 = tmp_path / "script"
    proc = run_python(
        ["data_prep/voxceleb_prepare.py", "--data_folder", data, "--save_folder", save2]
        + ["--speakers", "2"],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert {r["spk_id"] for r in read_csv(save2 / "train.csv")} == {"id10001", "id10002"}


def test_voxceleb_root_detection(tmp_path, clips):
    make_vox(tmp_path / "flat", clips, speakers=["id00012"], sub="")
    out = prepare_voxceleb(tmp_path / "flat", tmp_path / "s1", n_iden_test=0, valid_ratio=0)
    assert read_csv(out["train"])[0]["wav"].startswith("$data_root/id00012/vid0/")
    make_vox(tmp_path / "vox2", clips, speakers=["id00012"], sub="dev/aac", ext=".flac")
    out = prepare_voxceleb(tmp_path / "vox2", tmp_path / "s2", n_iden_test=0, valid_ratio=0)
    assert read_csv(out["train"])[0]["wav"].startswith("$data_root/dev/aac/id00012/vid0/")


# ---------------------------------------------------------------------------------- bad input


def test_missing_and_empty_data_folder(tmp_path):
    missing = tmp_path / "missing_data"
    with pytest.raises(FileNotFoundError, match="missing_data"):
        prepare_voxceleb(missing, tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="missing_data"):
        prepare_folder(missing, tmp_path / "s")
    empty = tmp_path / "empty_data"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty_data"):
        prepare_voxceleb(empty, tmp_path / "s")
    with pytest.raises(ValueError, match="empty_data"):
        prepare_folder(empty, tmp_path / "s")
    (empty / "id10001" / "vid").mkdir(parents=True)
    with pytest.raises(ValueError, match="No audio file.*empty_data"):
        prepare_voxceleb(empty, tmp_path / "s")


def _break(path, kind):
    if kind == "empty":
        sf.write(path, np.zeros(0, dtype=np.float32), RATE)
    elif kind == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif kind == "truncated":
        flac = sorted(LIBRI.glob("*/*.flac"))[0].read_bytes()
        path.unlink()
        path = path.with_suffix(".flac")
        path.write_bytes(flac[: len(flac) // 3])
    return path


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated"])
def test_bad_audio_file(vox, tmp_path, kind):
    data, trials = vox
    bad = _break(data / "wav/id10002/vid1/00003.wav", kind)
    with pytest.raises(ValueError, match=str(bad)):  # AudioError is a ValueError
        prepare_voxceleb(data, tmp_path / "s", verification_file=trials)
    assert not (tmp_path / "s" / "prep_options.json").exists()
    out = prepare_voxceleb(data, tmp_path / "s", verification_file=trials, skip_bad_files=True)
    assert str(bad) in Path(out["bad_files"]).read_text()
    everything = [i for n in SPLIT_CSVS for i in ids(tmp_path / "s", n)]
    assert "id10002--vid1--00003" not in everything
    assert len(set(everything)) == 31


def _poison(path, clip, value):
    """A float32 wav whose samples are ``clip`` with ``value`` (NaN or inf) in the middle."""
    sig = clip.copy()
    sig[len(sig) // 2 : len(sig) // 2 + 3] = value
    sf.write(path, sig, RATE, subtype="FLOAT")
    return path


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_found_at_prep(vox, tmp_path, clips, value):
    data, trials = vox
    bad = _poison(data / "wav/id10002/vid1/00003.wav", clips[0], value)
    with pytest.raises(ValueError, match="NaN or infinite") as err:
        prepare_voxceleb(data, tmp_path / "s", verification_file=trials)
    message = str(err.value)
    assert str(bad) in message and "0.750 s" in message
    assert "--skip_bad_files=True" in message and "Remove the file" in message
    assert not (tmp_path / "s" / "prep_options.json").exists()
    out = prepare_voxceleb(data, tmp_path / "s", verification_file=trials, skip_bad_files=True)
    listed = Path(out["bad_files"]).read_text()
    assert f"{bad}\t" in listed and "NaN or infinite" in listed
    everything = [i for n in SPLIT_CSVS for i in ids(tmp_path / "s", n)]
    assert "id10002--vid1--00003" not in everything
    assert len(set(everything)) == 31


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_silent_file_warned_or_skipped(vox, tmp_path, caplog, subtype):
    data, trials = vox
    silent = data / "wav/id10003/vid1/00002.wav"  # also named in a target trial
    sf.write(silent, np.zeros(2 * RATE, dtype=np.float32), RATE, subtype=subtype)
    with caplog.at_level(logging.WARNING):
        out = prepare_voxceleb(data, tmp_path / "s", verification_file=trials)
    assert "1 file(s) are digitally silent" in caplog.text and str(silent) in caplog.text
    assert "skip_bad_files=True" in caplog.text
    assert "bad_files" not in out
    everything = {i for n in SPLIT_CSVS for i in ids(tmp_path / "s", n)}
    assert "id10003--vid1--00002" in everything  # kept, as the warning says
    caplog.clear()
    out = prepare_voxceleb(data, tmp_path / "s2", verification_file=trials, skip_bad_files=True)
    assert f"{silent}\tdigitally silent" in Path(out["bad_files"]).read_text()
    for name in SPLIT_CSVS + ["veri_utts.csv"]:
        assert "id10003--vid1--00002" not in ids(tmp_path / "s2", name)
    assert len(read_csv(out["veri_trials"])) == len(VOX_TRIALS) - 1


def test_non_finite_and_silent_files_in_folder_prep(tmp_path, clips):
    data = tmp_path / "spk"
    for spk in ["a", "b"]:
        (data / spk).mkdir(parents=True)
        for u in range(6):
            sf.write(data / spk / f"{u}.wav", clips[u], RATE)
    nan = _poison(data / "a" / "1.wav", clips[1], np.nan)
    silent = data / "b" / "4.wav"
    sf.write(silent, np.zeros(RATE, dtype=np.float32), RATE)
    with pytest.raises(ValueError, match=f"{nan}.*NaN"):
        prepare_folder(data, tmp_path / "s")
    out = prepare_folder(data, tmp_path / "s", skip_bad_files=True)
    listed = dict(line.split("\t") for line in Path(out["bad_files"]).read_text().splitlines())
    assert set(listed) == {str(nan), str(silent)}
    assert listed[str(silent)].startswith("digitally silent")
    kept = {r["ID"] for n in SPLIT_CSVS for r in read_csv(Path(out[n[:-4]]))}
    assert not kept & {"a--1", "b--4"}


def test_bad_file_in_folder_prep(tmp_path, clips):
    data = tmp_path / "spk"
    for spk in ["a", "b"]:
        (data / spk).mkdir(parents=True)
        for u in range(6):
            sf.write(data / spk / f"{u}.wav", clips[u], RATE)
    bad = _break(data / "b" / "2.wav", "garbage")
    with pytest.raises(ValueError, match=str(bad)):
        prepare_folder(data, tmp_path / "s")
    out = prepare_folder(data, tmp_path / "s", skip_bad_files=True)
    assert str(bad) in Path(out["bad_files"]).read_text()
    assert "b--2" not in {r["ID"] for r in read_csv(out["veri_utts"])}
    # fixed data: the stale bad_files.txt goes away
    bad.unlink()
    out = prepare_folder(data, tmp_path / "s")
    assert "bad_files" not in out and not (tmp_path / "s" / "bad_files.txt").exists()


def test_too_short_file_is_excluded(vox, tmp_path, caplog, clips):
    data, _ = vox
    short = data / "wav/id10001/vid0/00002.wav"
    sf.write(short, clips[0][:8000], RATE)
    with caplog.at_level(logging.WARNING):
        out = prepare_voxceleb(data, tmp_path / "s", min_duration=1.0)
    assert "1 file(s) shorter than min_duration" in caplog.text
    everything = [i for n in SPLIT_CSVS for i in ids(tmp_path / "s", n)]
    assert "id10001--vid0--00002" not in everything
    assert "bad_files" not in out


def test_trial_naming_missing_file(vox, tmp_path):
    data, trials = vox
    write_trials(trials, VOX_TRIALS + ["1 id10001/vid0/00001.wav id10001/vid9/00042.wav"])
    with pytest.raises(FileNotFoundError) as err:
        prepare_voxceleb(data, tmp_path / "s", verification_file=trials)
    assert str(trials) in str(err.value)
    assert "line 5" in str(err.value) and "id10001/vid9/00042.wav" in str(err.value)
    out = prepare_voxceleb(data, tmp_path / "s", verification_file=trials, skip_bad_files=True)
    assert "id10001/vid9/00042.wav" in Path(out["bad_files"]).read_text()
    assert len(read_csv(out["veri_trials"])) == 4
    write_trials(trials, ["1 id10001/vid0/00001.wav"])
    with pytest.raises(ValueError, match="line 1"):
        prepare_voxceleb(data, tmp_path / "s2", verification_file=trials)


def test_a_binary_trial_list_is_named(vox, tmp_path):
    """Issue 22 row 11: was a UnicodeDecodeError naming no file."""
    data, trials = vox
    trials.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match="not a UTF-8 text file") as err:
        prepare_voxceleb(data, tmp_path / "s", verification_file=trials)
    assert str(trials) in str(err.value) and "veri_test2.txt" in str(err.value)
    assert not (tmp_path / "s" / "prep_options.json").exists()


def test_a_binary_manifest_is_named(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"ID,duration,wav,spk_id\n" + bytes(range(128, 256)))
    with pytest.raises(ValueError, match=f"Manifest {path} is not a UTF-8 text CSV"):
        read_csv(path, UTT_COLUMNS)


def test_a_mixture_manifest_without_rows_is_blamed_not_the_enrolment(tmp_path):
    """Issue 22 row 12: a header-only test.csv made the enrolment manifest 'cover 0 of the
    mixture speakers'."""
    from sepid.data.schema import EVAL_MIXTURE_COLUMNS
    from sepid.separation.data import mixture_speakers

    test_csv = tmp_path / "test.csv"
    test_csv.write_text(",".join(EVAL_MIXTURE_COLUMNS) + "\n")
    with pytest.raises(ValueError, match=f"Mixture manifest {test_csv} has no rows") as err:
        mixture_speakers(test_csv)
    assert "nrolment" not in str(err.value) and "make_mixtures.py" in str(err.value)


# Root reads every file whatever its mode: the prep runs without the two capabilities that let
# it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), through util-linux's setpriv, so the test runs as
# root too; as another user the mode alone does it.
NO_READ_OVERRIDE = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
    "--",
]
PREP_UNREADABLE = """
import sys
from sepid.data.folder import prepare_folder
out = prepare_folder(sys.argv[1], sys.argv[2], trial_speakers=None, skip_bad_files=sys.argv[3] == "skip")
print(open(out["bad_files"]).read())
"""


@pytest.mark.parametrize("skip", [False, True])
def test_a_file_the_user_cannot_read_says_permission_denied(tmp_path, skip):
    """Issue 22 row 16: it was called "truncated or not audio"."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: no way to make a file unreadable")
        prefix = NO_READ_OVERRIDE
    data = tmp_path / "data"
    for spk in ("1688", "1998"):
        shutil.copytree(LIBRI / spk, data / spk)
    locked = data / "1998" / "1998-15444-0000.flac"
    assert locked.is_file()
    locked.chmod(0)
    proc = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-c",
            PREP_UNREADABLE,
            data,
            tmp_path / "s",
            str(skip and "skip"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if skip:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"{locked}" in proc.stdout and "permission denied" in proc.stdout
    else:
        assert proc.returncode != 0
        assert f"Cannot read audio file {locked}: permission denied" in proc.stderr
        assert "truncated" not in proc.stderr


def test_manifest_missing_column(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text("ID,wav,spk_id\na,x,s\n")
    with pytest.raises(ValueError, match="broken.csv") as err:
        read_csv(path, UTT_COLUMNS)
    assert "duration" in str(err.value)
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        read_csv(tmp_path / "absent.csv", UTT_COLUMNS)


# ---------------------------------------------------------------------------------- m4a


def _m4a_tree(root, clips):
    """VoxCeleb2-like tree whose '.m4a' files are really wav (enough for a fake ffmpeg)."""
    make_vox(
        root, clips, speakers=["id00001", "id00002"], videos=1, utts=5, sub="dev/aac", ext=".m4a"
    )
    return root


def test_ffmpeg_missing(tmp_path, clips, monkeypatch):
    data = _m4a_tree(tmp_path / "vox2", clips)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    monkeypatch.setattr(voxceleb, "_bundled_ffmpeg", lambda: None)  # nor imageio-ffmpeg's
    with pytest.raises(RuntimeError, match="ffmpeg") as err:
        prepare_voxceleb(data, tmp_path / "s")
    assert "apt-get install ffmpeg" in str(err.value) and "conda" in str(err.value)
    assert "pip install imageio-ffmpeg" in str(err.value)
    with pytest.raises(ValueError, match="m4a"):
        prepare_voxceleb(data, tmp_path / "s", convert_m4a=False)


FAKE_FFMPEG = """#!{python}
import sys
import soundfile as sf
args = sys.argv[1:]
src, dst = args[args.index("-i") + 1], args[-1]
with open({log!r}, "a") as f:
    f.write(src + "\\n")
if "bad" in src:
    sys.stderr.write("Invalid data found when processing input\\n")
    sys.exit(1)
data, rate = sf.read(src)
sf.write(dst, data, rate, format="FLAC")
"""


def test_m4a_conversion_with_fake_ffmpeg(tmp_path, clips, monkeypatch):
    data = _m4a_tree(tmp_path / "vox2", clips)
    log = tmp_path / "ffmpeg.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ffmpeg = bin_dir / "ffmpeg"
    ffmpeg.write_text(FAKE_FFMPEG.format(python=sys.executable, log=str(log)))
    ffmpeg.chmod(ffmpeg.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    # a flac already beside its m4a is reused, never overwritten
    existing = data / "dev/aac/id00001/vid0/00001.flac"
    sf.write(existing, clips[5][:20000], RATE)
    out = prepare_voxceleb(data, tmp_path / "s", n_iden_test=1, valid_ratio=0)
    rows = [r for n in ["train", "iden_test"] for r in read_csv(out[n])]
    assert len(rows) == 10 and all(r["wav"].endswith(".flac") for r in rows)
    assert all(resolve(r["wav"], data).is_file() for r in rows)
    assert len(list(data.rglob("*.m4a"))) == 10  # originals kept
    assert sf.info(existing).frames == 20000
    assert len(log.read_text().splitlines()) == 9
    assert not list(data.rglob(".*"))  # no temporary file left
    prepare_voxceleb(data, tmp_path / "s2", n_iden_test=1, valid_ratio=0)
    assert len(log.read_text().splitlines()) == 9  # converted once
    # a file ffmpeg cannot convert: error naming it, or skipped and listed
    bad = data / "dev/aac/id00002/vid0/bad.m4a"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.m4a"):
        prepare_voxceleb(data, tmp_path / "s3")
    out = prepare_voxceleb(data, tmp_path / "s3", skip_bad_files=True)
    assert str(bad) in Path(out["bad_files"]).read_text()


def make_m4a_corpus(root, ffmpeg, speakers=("1688", "1998"), videos=2, utts=2, workers=4):
    """A VoxCeleb2-layout tree ``root/dev/aac/id<spk>/vid<v>/<u>.m4a`` of real AAC files encoded
    by ``ffmpeg`` from the shipped LibriSpeech speech (stereo 44.1 kHz, so that the conversion
    downmixes and resamples); returns ``{m4a path: source flac}``."""
    jobs = {}
    for spk in speakers:
        sources = sorted((LIBRI / spk).glob("*.flac"))
        for i, src in enumerate(sources[: videos * utts]):
            folder = root / "dev/aac" / f"id{spk}" / f"vid{i // utts}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs[folder / f"{i % utts:05d}.m4a"] = src
    encode = ["-nostdin", "-loglevel", "error", "-ac", "2", "-ar", "44100", "-c:a", "aac"]

    def one(item):
        dst, src = item
        subprocess.run([ffmpeg, "-i", str(src), *encode, str(dst)], check=True)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, jobs.items()))
    return jobs


def test_m4a_conversion_with_real_ffmpeg(tmp_path, monkeypatch):
    """VoxCeleb2's m4a path for real (issue 22 row 17): AAC files made from the shipped speech,
    converted by data prep with the ffmpeg that imageio-ffmpeg (a dependency) ships, as on a
    machine with no system ffmpeg (PATH without one): 16 kHz mono flac of the same speech."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    bundled = voxceleb._bundled_ffmpeg()
    assert bundled is not None, "imageio-ffmpeg (a dependency) ships no ffmpeg here"
    assert voxceleb._ffmpeg_or_raise() == bundled
    jobs = make_m4a_corpus(tmp_path / "vox2", bundled)
    out = prepare_voxceleb(
        tmp_path / "vox2", tmp_path / "s", n_iden_test=0, n_iden_enrol=1, valid_ratio=0
    )
    rows = read_csv(out["train"])
    assert len(rows) == len(jobs) == 8
    for row in rows:
        flac = resolve(row["wav"], tmp_path / "vox2")
        source = jobs[flac.with_suffix(".m4a")]
        info = sf.info(flac)
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
        converted, _ = sf.read(flac, dtype="float32")
        original, _ = sf.read(source, dtype="float32")
        assert abs(len(converted) - len(original)) < 0.01 * RATE  # AAC priming only
        n = min(len(converted), len(original))
        corr = np.corrcoef(converted[:n], original[:n])[0, 1]
        assert corr > 0.9, f"{flac}: correlation {corr:.3f} with its source"
    assert len(list((tmp_path / "vox2").rglob("*.m4a"))) == 8  # originals kept


def test_m4a_folder_not_writable(tmp_path, clips, monkeypatch):
    data = _m4a_tree(tmp_path / "vox2", clips)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    # chmod does not stop root, so the permission check itself is faked
    monkeypatch.setattr(voxceleb, "_writable", lambda folder: False)
    with pytest.raises(PermissionError, match="not writable") as err:
        prepare_voxceleb(data, tmp_path / "s")
    assert "id00001" in str(err.value) and "Copy the dataset" in str(err.value)


# ---------------------------------------------------------------------------------- folders


def test_folder_prepare_librispeech(tmp_path):
    out = prepare_folder(LIBRI, tmp_path / "a")
    train = read_csv(out["train"], UTT_COLUMNS)
    assert len({r["spk_id"] for r in train}) == 10
    assert "1688--1688-142285-0000" in {r["ID"] for n in SPLIT_CSVS_KEYS for r in read_csv(out[n])}
    assert all(resolve(r["wav"], LIBRI).is_file() for r in train)
    trials = read_csv(out["veri_trials"], TRIAL_COLUMNS)
    labels = [r["label"] for r in trials]
    assert labels.count("1") == labels.count("0") > 0
    pairs = [frozenset((r["enrol"], r["test"])) for r in trials]
    assert all(len(p) == 2 for p in pairs), "self-trial"
    assert len(set(pairs)) == len(pairs), "duplicate trial"
    spk = {r["ID"]: r["spk_id"] for r in read_csv(out["veri_utts"], UTT_COLUMNS)}
    assert len(spk) == 100  # every utterance is eligible and used
    for r in trials:
        assert (spk[r["enrol"]] == spk[r["test"]]) == (r["label"] == "1")
    out_b = prepare_folder(LIBRI, tmp_path / "b")
    assert Path(out["veri_trials"]).read_text() == Path(out_b["veri_trials"]).read_text()
    assert Path(out["train"]).read_text() == Path(out_b["train"]).read_text()
    out_c = prepare_folder(LIBRI, tmp_path / "c", seed=5, n_trials=40, trial_speakers=3)
    trials_c = read_csv(out_c["veri_trials"])
    assert len(trials_c) == 40 and sum(r["label"] == "1" for r in trials_c) == 20
    assert len({r["spk_id"] for r in read_csv(out_c["veri_utts"])}) == 3


def test_folder_prepare_flat_names(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted(LIBRI.glob("*/*.flac"))[:30]:  # 3 speakers
        shutil.copy(f, flat / f.name)
    out = prepare_folder(flat, tmp_path / "s", speakers=["1688", "1998"])
    rows = read_csv(out["train"])
    assert {r["spk_id"] for r in rows} == {"1688", "1998"}
    assert all(r["ID"] == Path(r["wav"]).stem and r["wav"].count("/") == 1 for r in rows)
    assert all(r["ID"].startswith(r["spk_id"] + "-") for r in rows)
    assert len({r["spk_id"] for r in read_csv(out["veri_utts"])}) == 3
    (flat / "nodash.flac").write_bytes((flat / rows[0]["wav"].split("/")[-1]).read_bytes())
    with pytest.raises(ValueError, match="nodash.flac"):
        prepare_folder(flat, tmp_path / "s2")


def test_folder_prepare_follows_speaker_folder_symlinks(tmp_path, caplog):
    """A speaker folder that links to a folder outside data_folder is listed as any other
    (issue 22 row 7: it was dropped from speakers=all and 'did not exist' when named); a link
    loop is listed once, with a warning."""
    speakers = sorted(p.name for p in LIBRI.iterdir() if p.is_dir())[:4]
    data = tmp_path / "data"
    data.mkdir()
    for spk in speakers[:2]:
        shutil.copytree(LIBRI / spk, data / spk)
    for spk in speakers[2:]:
        (data / spk).symlink_to(LIBRI / spk, target_is_directory=True)  # outside data_folder
    (data / speakers[0] / "loop").symlink_to(data, target_is_directory=True)
    with caplog.at_level(logging.WARNING):
        out = prepare_folder(data, tmp_path / "s", trial_speakers=None)
    rows = [r for n in SPLIT_CSVS_KEYS for r in read_csv(out[n], UTT_COLUMNS)]
    assert {r["spk_id"] for r in rows} == set(speakers)
    assert len({r["ID"] for r in rows}) == 40  # 10 each, the loop not followed
    assert all(resolve(r["wav"], data).is_file() for r in rows)
    assert f"{data / speakers[0] / 'loop'} is {data} again" in caplog.text
    named = prepare_folder(data, tmp_path / "named", speakers=speakers[2:], trial_speakers=None)
    assert {r["spk_id"] for r in read_csv(named["train"], UTT_COLUMNS)} == set(speakers[2:])


@pytest.mark.skipif(not SHARED_FLAT.is_dir(), reason="shared train-clean-100 sample absent")
def test_folder_prepare_shared_flat_librispeech(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        out = prepare_folder(SHARED_FLAT, tmp_path / "s", trial_speakers=None)
    rows = read_csv(out["train"], UTT_COLUMNS)
    assert len({r["spk_id"] for r in rows}) == len(rows) == 251
    assert "103-1240-0000" in {r["ID"] for r in rows}
    assert "veri_trials" not in out
    assert "go entirely to train" in caplog.text  # one utterance per speaker
    with pytest.raises(ValueError, match="single"):
        prepare_folder(SHARED_FLAT, tmp_path / "t", speakers=5)


def test_folder_needs_two_trial_speakers(tmp_path):
    with pytest.raises(ValueError, match="at least 2 speakers"):
        prepare_folder(LIBRI, tmp_path / "s", trial_speakers=["1688"])


# ------------------------------------------------------------- sepid.data.prep, sepid.data.speakers


def test_split_rule_small_speakers(caplog):
    utts = {"big": [f"big{i}" for i in range(20)], "tiny": ["t0", "t1", "t2"]}
    with caplog.at_level(logging.WARNING):
        splits = split_speaker_utterances(utts, n_iden_enrol=3, n_iden_test=2, valid_ratio=0.1)
    assert "tiny (3)" in caplog.text
    assert {"t0", "t1", "t2"} <= set(splits["train"])
    assert not any(
        i.startswith("t") for k in ["valid", "iden_enrol", "iden_test"] for i in splits[k]
    )
    assert len(splits["iden_test"]) == 2 and len(splits["valid"]) == 2  # round(0.1 * 18)
    assert len(splits["train"]) == 16 + 3
    # a speaker's split does not depend on the other speakers
    alone = split_speaker_utterances({"big": utts["big"]})
    assert alone["iden_test"] == splits["iden_test"]


def test_select_speakers_forms(tmp_path):
    avail = ["b", "a", "c"]
    assert select_speakers(avail, "all") == ["a", "b", "c"]
    assert select_speakers(avail, 2) == ["a", "b"]
    assert select_speakers(avail, "c,a") == ["a", "c"]
    with pytest.raises(ValueError, match="zz"):
        select_speakers(avail, ["a", "zz"], "somewhere")
    with pytest.raises(FileNotFoundError, match="nofile.txt"):
        select_speakers(avail, str(tmp_path / "nofile.txt"))


def test_generate_trials_balanced():
    utts = {s: [f"{s}_{i}" for i in range(n)] for s, n in [("a", 2), ("b", 7), ("c", 1), ("d", 12)]}
    trials = generate_trials(utts, trials_per_utterance=3, seed=1)
    assert trials == generate_trials(utts, trials_per_utterance=3, seed=1)
    assert trials != generate_trials(utts, trials_per_utterance=3, seed=2)
    labels = [t[0] for t in trials]
    assert labels.count(1) == labels.count(0)
    assert len({frozenset(t[1:]) for t in trials}) == len(trials)
    assert all(t[1] != t[2] for t in trials)
    assert all((t[1][0] == t[2][0]) == (t[0] == 1) for t in trials)
    with pytest.raises(ValueError, match="at least 2 speakers"):
        generate_trials({"a": ["a1", "a2"]})


def test_split_holds_out_segments_for_speakers_without_validation(caplog):
    utts = {"big": [f"big{i}" for i in range(20)], "one": ["o0"], "two": ["w0", "w1"]}
    durations = {u: 4.0 for ids in utts.values() for u in ids}
    durations.update({"w0": 2.5, "w1": 6.0, "o0": 2.9})
    kwargs = dict(n_iden_enrol=3, n_iden_test=2, valid_ratio=0.1, min_duration=1.0)
    without = split_speaker_utterances(utts, **kwargs)
    assert without["held_out"] == {}
    with caplog.at_level(logging.INFO):
        splits = split_speaker_utterances(
            utts, durations=durations, valid_segment_seconds=2.0, **kwargs
        )
    # the longest utterance long enough (2 s + min_duration) gives its last 2 s; "one" has none
    assert splits["held_out"] == {"w1": 4.0}
    assert "not validated: one" in caplog.text
    # the rest of the split is unchanged
    assert {k: v for k, v in splits.items() if k != "held_out"} == {
        k: v for k, v in without.items() if k != "held_out"
    }
    with pytest.raises(ValueError, match="durations"):
        split_speaker_utterances(utts, valid_segment_seconds=2.0)


def test_folder_prepare_one_utterance_per_speaker_validates_on_held_out_segments(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    by_spk = {}
    for f in sorted(LIBRI.glob("*/*.flac")):  # each speaker's longest file
        if sf.info(f).frames > sf.info(by_spk.get(f.parent.name, f)).frames:
            by_spk[f.parent.name] = f
        by_spk.setdefault(f.parent.name, f)
    for f in by_spk.values():  # one utterance per speaker
        shutil.copy(f, flat / f.name)
    empty = prepare_folder(flat, tmp_path / "off", trial_speakers=None)
    assert read_csv(empty["valid"]) == []
    out = prepare_folder(flat, tmp_path / "on", trial_speakers=None, valid_segment_seconds=2.0)
    train = {r["ID"]: r for r in read_csv(out["train"], SEGMENT_COLUMNS)}
    valid = read_csv(out["valid"], SEGMENT_COLUMNS)
    assert len(valid) == len(train) == len(by_spk)
    for row in valid:
        utt_id, cut = row["ID"].split("@")
        head = train[utt_id]
        # training stops where the held-out segment starts; the segment runs to the file's end
        assert float(head["start"]) == 0.0 and float(head["stop"]) == float(cut)
        assert float(row["start"]) == float(cut) and row["wav"] == head["wav"]
        end = sf.info(resolve(row["wav"], flat)).duration
        assert abs(float(row["stop"]) - end) < 1e-3 and abs(float(row["duration"]) - 2.0) < 1e-3
        assert abs(float(head["duration"]) + 2.0 - end) < 1e-3
    assert read_csv(out["iden_test"]) == []
    # the option is part of the saved options: turning it off redoes the split
    again = prepare_folder(flat, tmp_path / "on", trial_speakers=None)
    assert read_csv(again["valid"]) == []


def test_segment_pipelines_stay_inside_the_segment(tmp_path):
    from sepid.data.dataio import random_crop_pipeline, segment_pipeline

    wav = tmp_path / "ramp.wav"
    sf.write(wav, np.arange(4 * RATE, dtype=np.float32) / (4 * RATE), RATE, subtype="FLOAT")
    crop = random_crop_pipeline(RATE, 0.5)
    torch.manual_seed(0)
    for _ in range(20):
        sig = crop(str(wav), "0.0", "1.0")
        assert sig.shape[0] == RATE // 2 and float(sig.max()) <= 0.25 + 1e-6
    whole = segment_pipeline(RATE, max_seconds=1.0)(str(wav), "3.0", "4.0")
    assert whole.shape[0] == RATE and float(whole.min()) >= 0.75 - 1e-6
    short = crop(str(wav), "3.8", "4.0")  # shorter than the crop: repeated, still in the segment
    assert short.shape[0] == RATE // 2 and float(short.min()) >= 0.95 - 1e-6

"""VoxCeleb2's m4a conversion rate: files and audio seconds per wall second, extrapolated to
VoxCeleb2 dev's 1,092,009 files.

Usage::

    python tests/benchmarks/bench_m4a_conversion.py [--workers 2] [--repeat 3] \\
        [--work /tmp/m4a-bench] [--out tests/benchmarks/results/m4a_conversion.json]

Every LibriSpeech file of the shipped sample (``tests/samples/librispeech-mini/test-other``,
100 files) is encoded once, as VoxCeleb2's files are (AAC in m4a, 16 kHz mono), into a
VoxCeleb2-layout tree; then data prep's own conversion (``sepid.data.voxceleb.
convert_m4a_files``: ffmpeg to 16 kHz mono flac beside each m4a, ``--workers`` ffmpeg processes,
the ffmpeg data prep picks: the system's on PATH, else imageio-ffmpeg's) is timed on the whole
tree, ``--repeat`` times (the flac files removed between runs). Reported: the best and median
run, files/s, audio seconds per wall second and per CPU second, and the extrapolation to
VoxCeleb2 dev by file count and by audio length (VoxCeleb2: 2,442 h in 1,128,246 utterances,
7.79 s on average; the sample's files are longer or shorter, so both are given).
"""

import argparse
import concurrent.futures
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf
from bench_common import REPO, write_result  # sibling module (the script folder is on sys.path)

sys.path.insert(0, str(REPO))
from sepid.data.prep import Utterance  # noqa: E402
from sepid.data.voxceleb import _ffmpeg_or_raise, convert_m4a_files  # noqa: E402

SAMPLE = REPO / "tests/samples/librispeech-mini/test-other"
VOXCELEB2_DEV_FILES = 1_092_009
VOXCELEB2_MEAN_SECONDS = 2442 * 3600 / 1_128_246


def make_tree(root, ffmpeg, workers):
    """``root/dev/aac/id<spk>/<chapter>/<utt>.m4a`` (16 kHz mono AAC) for every sample file;
    returns ``{m4a path: duration in seconds}``. Reuses a complete tree."""
    sources = sorted(SAMPLE.glob("*/*.flac"))
    jobs = {}
    for src in sources:
        spk, chapter, utt = src.stem.split("-")
        jobs[root / "dev/aac" / f"id{spk}" / chapter / f"{utt}.m4a"] = src

    def encode(item):
        dst, src = item
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}")
            cmd = [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(src)]
            cmd += ["-ac", "1", "-ar", "16000", "-c:a", "aac", "-f", "ipod", str(tmp)]
            subprocess.run(cmd, check=True)
            os.replace(tmp, dst)
        return dst, sf.info(src).duration

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(encode, jobs.items()))


def convert_once(m4a_files, workers):
    """Data prep's conversion of every file, from no flac; returns ``(wall, cpu)`` seconds."""
    for path in m4a_files:
        path.with_suffix(".flac").unlink(missing_ok=True)
    utterances = {
        str(p): Utterance(str(p), str(p), p.parent.parent.name) for p in sorted(m4a_files)
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    bad = convert_m4a_files(utterances, num_workers=workers)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if bad:
        raise RuntimeError(f"conversion failed: {bad[:3]}")
    assert all(u.path.endswith(".flac") for u in utterances.values())
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="ffmpeg processes (cores)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/m4a-bench"))
    parser.add_argument(
        "--out", type=Path, default=REPO / "tests/benchmarks/results/m4a_conversion.json"
    )
    args = parser.parse_args(argv)
    ffmpeg = _ffmpeg_or_raise()
    durations = make_tree(args.work, ffmpeg, args.workers)
    audio_seconds = sum(durations.values())
    runs = sorted(convert_once(list(durations), args.workers) for _ in range(args.repeat))
    best_wall, best_cpu = runs[0]
    median_wall, median_cpu = runs[len(runs) // 2]
    files_per_s = len(durations) / median_wall
    audio_per_s = audio_seconds / median_wall
    result = {
        "ffmpeg": ffmpeg if shutil.which("ffmpeg") == ffmpeg else f"imageio-ffmpeg: {ffmpeg}",
        "workers": args.workers,
        "files": len(durations),
        "audio_seconds": round(audio_seconds, 1),
        "mean_file_seconds": round(audio_seconds / len(durations), 2),
        "wall_s": [round(w, 2) for w, _ in runs],
        "cpu_s": [round(c, 2) for _, c in runs],
        "median": {
            "files_per_s": round(files_per_s, 1),
            "audio_s_per_wall_s": round(audio_per_s, 1),
            "audio_s_per_cpu_s": round(audio_seconds / median_cpu, 1),
        },
        "best_files_per_s": round(len(durations) / best_wall, 1),
        "voxceleb2_dev_hours": {
            "by_file_count": round(VOXCELEB2_DEV_FILES / files_per_s / 3600, 1),
            "by_audio_length": round(
                VOXCELEB2_DEV_FILES * VOXCELEB2_MEAN_SECONDS / audio_per_s / 3600, 1
            ),
        },
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()

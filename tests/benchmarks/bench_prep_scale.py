"""Data prep at VoxCeleb2 scale: rows per second, peak memory and the growth exponent.

Usage::

    python tests/benchmarks/bench_prep_scale.py [--sizes 10000 30000 100000] \\
        [--work /tmp/prep-scale] [--out tests/benchmarks/results/prep_scale.json]

For each size N, a VoxCeleb-shaped tree ``<work>/N/wav/id<spk>/<video>/<utt>.wav`` is generated
(VoxCeleb2's shape: about 182 utterances per speaker, 8 per video; every file a hard link of a
0.25 s, 16 kHz PCM noise file, so the tree costs inodes, not disk), with a verification list of
5.5 N trials in VoxCeleb's format (550k trials at N = 100k: VoxCeleb1-H's size). Then, each in a
fresh process so the peak resident memory is its own:

1. ``prepare_voxceleb`` (durations from headers, the per-file audio checks, the splits, the trial
   list read and checked against the files, the manifests written), all speakers;
2. mixture planning as ``make_mixtures`` does it before writing audio (``split_speaker_pools`` on
   the training manifest, then N/10 mixtures drawn: pairs and levels).

Reported: wall seconds, rows per second, peak RSS (``ru_maxrss``), and the exponent k of
time ~ N^k fitted over the sizes (1 = linear), with the extrapolation to VoxCeleb2's 1,092,009
files. The OS file cache is warm after generation (the hard links share one inode), so this
measures the CPU cost of prep, not disk reads.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from bench_common import REPO, write_result  # sibling module (the script folder is on sys.path)

VOXCELEB2_FILES = 1_092_009
UTTS_PER_SPEAKER = 182
UTTS_PER_VIDEO = 8
LINKS_PER_SOURCE = 10_000


def generate_tree(root, n_files, seed=0):
    """The VoxCeleb-shaped tree of ``n_files`` hard links and its trial list; returns the
    trial-file path. Reuses a complete tree from an earlier run."""
    done = root / "complete"
    trials = root / "veri_trials.txt"
    if done.is_file():
        return trials
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    n_spk = max(10, round(n_files / UTTS_PER_SPEAKER))
    paths = []
    for i in range(n_files):
        spk, j = i % n_spk, i // n_spk
        rel = f"id{spk:05d}/vid{j // UTTS_PER_VIDEO:05d}/{j % UTTS_PER_VIDEO:05d}.wav"
        path = root / "wav" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        source = root / f"source{i // LINKS_PER_SOURCE}.wav"  # file systems cap links per inode
        if not source.is_file():
            sf.write(source, 0.1 * rng.standard_normal(4000), 16000, subtype="PCM_16")
        os.link(source, path)
        paths.append(rel)
    n_trials = int(5.5 * n_files)
    a = rng.integers(len(paths), size=n_trials)
    b = rng.integers(len(paths), size=n_trials)
    with open(trials, "w", encoding="utf-8") as f:
        for x, y in zip(a, b, strict=True):
            same = int(paths[x].split("/")[0] == paths[y].split("/")[0])
            f.write(f"{same} {paths[x]} {paths[y]}\n")
    done.write_text("")
    return trials


def run_prep(root, trials):
    """(in a child process) prepare_voxceleb over the whole tree."""
    from sepid.data.voxceleb import prepare_voxceleb

    save = root / "prep"
    if save.exists():
        for f in save.iterdir():
            f.unlink()
    start = time.perf_counter()
    prepare_voxceleb(
        data_folder=root,
        save_folder=save,
        speakers="all",
        verification_file=trials,
        min_duration=0.1,
        convert_m4a=False,
    )
    return time.perf_counter() - start


def run_planning(root, n_mix):
    """(in a child process) make_mixtures' planning: speaker pools and n_mix draws."""
    from sepid.data.mixtures import draw_levels, draw_pair, split_speaker_pools

    start = time.perf_counter()
    pools, _ = split_speaker_pools(
        root / "prep" / "train.csv",
        root,
        split_speakers={"train": "all", "valid": 0, "test": 0},
        min_duration=0.1,
    )
    rng = np.random.default_rng(0)
    plan = [(draw_pair(rng, pools["train"]), draw_levels(rng)) for _ in range(n_mix)]
    assert len(plan) == n_mix
    return time.perf_counter() - start


def child(task, root, n):
    sys.path.insert(0, str(REPO))
    root = Path(root)
    if task == "prep":
        seconds = run_prep(root, root / "veri_trials.txt")
    elif task == "imports":  # the resident memory of the imports alone, for comparison
        import sepid.data.mixtures  # noqa: F401
        import sepid.data.voxceleb  # noqa: F401

        seconds = 0.0
    else:
        seconds = run_planning(root, n // 10)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib}))


def measure(task, root, n):
    out = subprocess.run(
        [sys.executable, __file__, "--child", task, str(root), str(n)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def exponent(sizes, seconds):
    """k of seconds ~ c N^k, least squares in log-log."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--work", default="/tmp/sepid-prep-scale")
    parser.add_argument("--out", default=REPO / "tests/benchmarks/results/prep_scale.json")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    rows = []
    imports_mib = measure("imports", args.work, 0)["peak_rss_mib"]
    for n in args.sizes:
        root = Path(args.work) / str(n)
        t0 = time.perf_counter()
        generate_tree(root, n)
        gen = time.perf_counter() - t0
        prep = measure("prep", root, n)
        plan = measure("plan", root, n)
        rows.append(
            {
                "n_files": n,
                "n_speakers": max(10, round(n / UTTS_PER_SPEAKER)),
                "n_trials": int(5.5 * n),
                "generate_seconds": gen,
                "prep_seconds": prep["seconds"],
                "prep_rows_per_second": n / prep["seconds"],
                "prep_peak_rss_mib": prep["peak_rss_mib"],
                "plan_mixtures": n // 10,
                "plan_seconds": plan["seconds"],
                "plan_peak_rss_mib": plan["peak_rss_mib"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    sizes = [r["n_files"] for r in rows]
    result = {"rows": rows, "imports_peak_rss_mib": imports_mib}
    if len(rows) >= 2:
        for key in ("prep", "plan"):
            k = exponent(sizes, [r[f"{key}_seconds"] for r in rows])
            last = rows[-1]
            result[f"{key}_exponent"] = k
            result[f"{key}_extrapolated_seconds_at_voxceleb2"] = last[f"{key}_seconds"] * (
                VOXCELEB2_FILES / last["n_files"]
            ) ** max(k, 1.0)
    result["method"] = (
        "wall time (time.perf_counter) of one call in a fresh process per task and size; peak "
        "RSS = ru_maxrss of that process (includes Python, numpy, torch imports); exponent = "
        "least-squares slope of log(seconds) on log(files); extrapolation = time at the largest "
        "size x (1,092,009 / size)^max(k, 1)"
    )
    write_result(args.out, result)


if __name__ == "__main__":
    main()

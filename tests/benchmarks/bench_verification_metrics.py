"""Benchmark of sepid.speaker.metrics against SpeechBrain's EER / minDCF.

Usage::

    python tests/benchmarks/bench_verification_metrics.py \\
        [--out tests/benchmarks/results/verification_metrics.json] [--n_trials 550000]

1. ``verification_metrics`` on ``n_trials`` synthetic trials shaped like VoxCeleb1-H (about one
   target per ten non-targets; targets ~ N(1, 1), non-targets ~ N(0, 1); float32 scores as
   cosine scoring produces them): wall time and peak memory.
2. On a subset SpeechBrain can handle (its ``EER`` loops in Python over ~2N thresholds and its
   ``minDCF`` builds a thresholds x trials matrix), timings of SpeechBrain vs ours and the
   largest absolute differences of the values.

Peak memory is measured two ways and both are reported: ``tracemalloc`` (allocations traced by
Python, which includes numpy array buffers) and the growth of the process's peak resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, a high-water mark: 0 if the call stays
below the earlier peak).
"""

import argparse
import resource
import sys
import time
import tracemalloc

import numpy as np
import torch
from bench_common import REPO, write_result  # sibling module (the script folder is on sys.path)

from sepid.speaker.metrics import (
    eer,
    min_dcf,
    verification_metrics,
)

MIB = 1024 * 1024


def _maxrss_mib():
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB


def make_trials(n_trials, target_ratio=1 / 11, seed=0):
    """Synthetic float32 scores and int64 labels."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n_trials) < target_ratio).astype(np.int64)
    scores = rng.normal(size=n_trials) + labels.astype(np.float64)
    return torch.tensor(scores, dtype=torch.float32), torch.tensor(labels)


def _best_of(fn, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", default=str(REPO / "tests/benchmarks/results/verification_metrics.json")
    )
    parser.add_argument("--n_trials", type=int, default=550_000)
    parser.add_argument("--subset_n", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from speechbrain.utils.metric_stats import EER, minDCF

    scores, labels = make_trials(args.n_trials)
    verification_metrics(scores[:1000], labels[:1000])  # warm-up (imports, allocator)

    # ---- full list: memory first (ru_maxrss is a high-water mark, so the untraced call must
    # come before anything else large), then a traced call, then timing (best of repeats)
    rss_before = _maxrss_mib()
    verification_metrics(scores, labels)
    rss_growth = _maxrss_mib() - rss_before
    tracemalloc.start()
    verification_metrics(scores, labels)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ours_seconds, metrics = _best_of(lambda: verification_metrics(scores, labels), args.repeats)

    # ---- subset: SpeechBrain vs ours
    sub_scores, sub_labels = make_trials(args.subset_n, seed=1)
    pos, neg = sub_scores[sub_labels == 1], sub_scores[sub_labels == 0]
    sb_eer_seconds, sb_eer = _best_of(lambda: EER(pos, neg), 1)
    sb_dcf_seconds, sb_dcf = _best_of(
        lambda: [minDCF(pos, neg, p_target=p) for p in (0.01, 0.05)], 1
    )
    ours_eer_seconds, our_eer = _best_of(lambda: eer(sub_scores, sub_labels), args.repeats)
    ours_dcf_seconds, our_dcf = _best_of(
        lambda: [
            min_dcf(sub_scores, sub_labels, p_target=p, normalise=False) for p in (0.01, 0.05)
        ],
        args.repeats,
    )
    ours_subset_seconds, _ = _best_of(
        lambda: verification_metrics(sub_scores, sub_labels), args.repeats
    )

    result = {
        "n_trials": args.n_trials,
        "n_target": metrics["n_target"],
        "n_nontarget": metrics["n_nontarget"],
        "ours_seconds": ours_seconds,
        "ours_seconds_method": f"time.perf_counter, best of {args.repeats}, verification_metrics "
        "(EER, 2 minDCF, 2 TAR@FAR, accuracy) on float32 torch scores",
        "ours_peak_mib": traced_peak / MIB,
        "ours_peak_mib_method": "tracemalloc peak of one verification_metrics call (Python and "
        "numpy allocations made by the call; the input tensors, shared zero-copy with numpy, are "
        "not counted)",
        "ours_maxrss_growth_mib": rss_growth,
        "ours_maxrss_growth_method": "growth of resource.getrusage(RUSAGE_SELF).ru_maxrss over the "
        "first full-size call (high-water mark, so it can under-count memory reused from "
        "the allocator; 0 if below an earlier peak)",
        "input_mib": (scores.numel() * scores.element_size() + labels.numel() * 8) / MIB,
        "metrics": metrics,
        "subset_n": args.subset_n,
        "speechbrain_eer_seconds": sb_eer_seconds,
        "speechbrain_mindcf_seconds": sb_dcf_seconds,
        "speechbrain_mindcf_note": "two calls (p_target 0.01 and 0.05)",
        "ours_eer_subset_seconds": ours_eer_seconds,
        "ours_mindcf_subset_seconds": ours_dcf_seconds,
        "ours_subset_seconds": ours_subset_seconds,
        "max_abs_diff_eer": abs(our_eer[0] - sb_eer[0]),
        "max_abs_diff_eer_threshold": abs(our_eer[1] - sb_eer[1]),
        "max_abs_diff_mindcf_unnormalised": max(
            abs(o[0] - r[0]) for o, r in zip(our_dcf, sb_dcf, strict=True)
        ),
        "max_abs_diff_mindcf_threshold": max(
            abs(o[1] - r[1]) for o, r in zip(our_dcf, sb_dcf, strict=True)
        ),
    }
    return write_result(args.out, result)


if __name__ == "__main__":
    main()

"""The speaker-bootstrap confidence intervals of the speaker evaluation at VoxCeleb1-H size:
time and memory.

Usage::

    python tests/benchmarks/bench_bootstrap_scale.py [--sizes 55089 550894] [--samples 1000] \\
        [--out tests/benchmarks/results/bootstrap_scale.json]

The trial list is ``bench_trial_scale.py``'s VoxCeleb1-shaped one (1,251 speakers, half target
trials; the smaller size a prefix of the full list) with float32 scores (N(1.5, 1) for targets,
N(0, 1) for non-targets, as a cosine column is float32). Measured separately, as
``recipes/speaker/evaluate.py`` runs them:

1. ``setup``: ``trial_bootstrap``'s ``SpeakerBootstrap`` (the speakers of every trial indexed,
   ``--samples`` multinomial draws of speaker counts), once per trial list;
2. ``resampled``: ``SpeakerBootstrap.resampled`` of one score column, what each model and scoring
   costs: one sort, then per resample the trial weights (``c_s`` or ``c_s * c_t``), weighted
   cumulative counts and the project's exact EER and minDCF at p = 0.01 and 0.05;
3. ``intervals``: the percentile intervals from those values.

Memory: the peak resident set size during the stage minus the resident size before it (the
high-water mark reset through ``/proc/self/clear_refs``), and for ``setup`` the tracemalloc
peak too (``measure`` of ``bench_trial_scale.py``, which runs a stage twice; ``resampled`` is
run once, untraced, to keep the benchmark short).
"""

import argparse
import time

import numpy as np
from bench_common import REPO, write_result  # sibling modules (the script folder is on sys.path)
from bench_trial_scale import (
    VOXCELEB1_H_TRIALS,
    _fresh_heap,
    _reset_peak_rss,
    _status_mib,
    measure,
    voxceleb1_utterances,
    voxceleb1h_trials,
)

from sepid.speaker.bootstrap import SpeakerBootstrap

P_TARGETS = (0.01, 0.05)


def run_size(speakers, labels, enrol, test, samples, seed):
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal(labels.shape[0]) + 1.5 * labels).astype(np.float32)
    names = np.array([f"id{10001 + s}" for s in range(int(speakers.max()) + 1)])
    enrol_spk, test_spk = names[speakers[enrol]], names[speakers[test]]
    stages = {}
    boot, stages["setup"] = measure(
        lambda: SpeakerBootstrap(
            enrol_spk, test_spk, labels, samples=samples, seed=seed, p_targets=P_TARGETS
        )
    )
    _fresh_heap()
    before = _status_mib("VmRSS")
    _reset_peak_rss()
    start = time.perf_counter()
    values = boot.resampled(scores)
    seconds = time.perf_counter() - start
    stages["resampled"] = {
        "seconds": seconds,
        "seconds_per_resample": seconds / samples,
        "peak_rss_above_start_mib": _status_mib("VmHWM") - before,
    }
    intervals, stages["intervals"] = measure(lambda: boot.intervals(None, values=values))
    return {
        "n_trials": int(labels.shape[0]),
        "n_speakers": int(len(boot.speakers)),
        "samples": samples,
        "undefined_resamples": int(np.isnan(values[:, 0]).sum()),
        "intervals": {k: [v["low"], v["high"]] for k, v in intervals.items()},
        "stages": stages,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[55_089, VOXCELEB1_H_TRIALS])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1986)
    parser.add_argument(
        "--out", default=str(REPO / "tests/benchmarks/results/bootstrap_scale.json")
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    speakers, _ = voxceleb1_utterances(rng)
    labels, enrol, test = voxceleb1h_trials(rng, speakers, max(args.sizes))
    results = [
        run_size(speakers, labels[:n], enrol[:n], test[:n], args.samples, args.seed)
        for n in sorted(args.sizes)
    ]
    write_result(
        args.out,
        {
            "benchmark": "speaker-bootstrap intervals (sepid.speaker.bootstrap) at VoxCeleb1-H size",
            "command": "python tests/benchmarks/bench_bootstrap_scale.py "
            + " ".join(f"--{k}={v}" for k, v in vars(args).items() if k != "out"),
            "p_targets": list(P_TARGETS),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()

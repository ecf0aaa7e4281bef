"""Benchmark of the separation metric stage: naive mir_eval pipeline vs sepid.metrics.separation.

Usage::

    python tests/benchmarks/bench_separation_metrics.py \\
        [--n_items 20] [--out tests/benchmarks/results/separation_metrics.json]

Items: ``n_items`` two-speaker items of 4 s at 8 kHz built from the LibriSpeech sample (two
utterances of different speakers, resampled 16 -> 8 kHz, each scaled to a random level);
estimates = reference + random leakage of the other source + white noise (fixed seed).

Measured, per item:

(a) the metric stage as a naive implementation does it: ``mir_eval.separation.
    bss_eval_sources(references, estimates)``, again ``bss_eval_sources(references,
    [mixture, mixture])`` for the mixture's SDR (-> SDRi), plus permutation-invariant SI-SDR and
    SI-SDRi in plain numpy; one process. It is timed twice, with the process's default BLAS
    threading and with single-threaded BLAS (on a small, shared machine the multi-threaded
    OpenBLAS solve can be several times slower); the faster of the two is the baseline.
(b) ours: ``evaluate_many(items, 8000, n_jobs=2, metrics=("si_sdr", "sdr"), backend="fast")``
    (the same metrics; process pool with single-threaded BLAS per worker, pool start-up
    included), and for reference the same in one process and the full row with PESQ and STOI.

Also timed: ``bss_eval_sources`` alone, mir_eval vs ``fast_bss_eval.numpy`` (one process,
single-threaded and default BLAS, best configuration of each), with the largest absolute
difference of SDR / SIR / SAR between the two backends and their permutation agreement.
"""

import argparse
import itertools
import time
import warnings

import numpy as np
import soundfile as sf

# sibling module (the script folder is on sys.path)
from bench_common import REPO, machine_info, write_result
from scipy.signal import resample_poly

from sepid.metrics.separation import (
    blas_threads_limited,
    bss_eval,
    evaluate_many,
    evaluate_separation,
    sdr_improvement,
)

SAMPLES = REPO / "tests/samples/librispeech-mini/test-other"
SR = 8000
SECONDS = 4.0


def make_items(n_items, seed=0):
    """``n_items`` (estimates, references, mixture) tuples, 4 s at 8 kHz, from LibriSpeech."""
    n_16k = int(SECONDS * 16000)
    by_speaker = {}
    for path in sorted(SAMPLES.glob("*/*.flac")):
        if sf.info(str(path)).frames >= n_16k:
            by_speaker.setdefault(path.parent.name, []).append(path)
    speakers = sorted(by_speaker)
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n_items):
        spk_a, spk_b = rng.choice(len(speakers), size=2, replace=False)
        sources = []
        for spk in (spk_a, spk_b):
            files = by_speaker[speakers[spk]]
            x, _ = sf.read(str(files[rng.integers(len(files))]), dtype="float64")
            start = int(rng.integers(0, x.shape[0] - n_16k + 1))
            x = resample_poly(x[start : start + n_16k], 1, 2)
            sources.append(x / x.std() * rng.uniform(0.03, 0.2))
        refs = np.stack(sources)
        leak = rng.uniform(0.05, 0.5, size=(2, 1))
        noise = rng.uniform(0.002, 0.03) * rng.standard_normal(refs.shape)
        est = refs + leak * refs[::-1] + noise
        if rng.random() < 0.5:
            est = est[::-1].copy()  # the separator's output order is arbitrary
        items.append((est, refs, refs.sum(axis=0)))
    return items


def _mir_eval_bss(refs, est):
    import mir_eval.separation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mir_eval.separation.bss_eval_sources(refs, est)


def _naive_si_sdr(est, ref):
    est = est - est.mean()
    ref = ref - ref.mean()
    target = (est @ ref) / (ref @ ref) * ref
    noise = est - target
    return 10 * np.log10((target @ target) / (noise @ noise))


def naive_stage(items):
    """The metric stage as a straightforward script computes it with mir_eval."""
    rows = []
    for est, refs, mix in items:
        sdr, sir, sar, perm = _mir_eval_bss(refs, est)
        mix_sdr = _mir_eval_bss(refs, np.stack([mix] * refs.shape[0]))[0]
        best = None
        for p in itertools.permutations(range(refs.shape[0])):
            vals = [_naive_si_sdr(est[p[i]], refs[i]) for i in range(refs.shape[0])]
            if best is None or np.mean(vals) > np.mean(best[0]):
                best = (vals, p)
        vals, p = best
        mix_si = [_naive_si_sdr(mix, refs[i]) for i in range(refs.shape[0])]
        rows.append(
            {
                "sdr": float(np.mean(sdr)),
                "sdri": float(np.mean(sdr - mix_sdr)),
                "sir": float(np.mean(sir)),
                "sar": float(np.mean(sar)),
                "si_sdr": float(np.mean(vals)),
                "si_sdri": float(np.mean(np.subtract(vals, mix_si))),
                "perm": list(p),
                "bss_perm": perm.tolist(),
            }
        )
    return rows


def _timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n_items", type=int, default=20)
    parser.add_argument(
        "--out", default=str(REPO / "tests/benchmarks/results/separation_metrics.json")
    )
    parser.add_argument("--n_jobs", type=int, default=2)
    args = parser.parse_args(argv)
    machine = machine_info()  # load average before the run

    items = make_items(args.n_items)
    n = len(items)
    metrics = ("si_sdr", "sdr")
    # warm-up: imports and first-call costs of every code path
    naive_stage(items[:1])
    evaluate_separation(*items[0], SR)

    # ---- (a) naive mir_eval stage, one process
    t_naive_default, naive_rows = _timed(lambda: naive_stage(items))
    with blas_threads_limited(1):
        t_naive_1, _ = _timed(lambda: naive_stage(items))

    # ---- (b) ours: process pool (single-threaded BLAS per worker), then one process
    t_ours, our_rows = _timed(lambda: evaluate_many(items, SR, n_jobs=args.n_jobs, metrics=metrics))
    with blas_threads_limited(1):
        t_ours_serial, _ = _timed(
            lambda: [evaluate_separation(*item, SR, metrics=metrics) for item in items]
        )
    t_ours_full, full_rows = _timed(lambda: evaluate_many(items, SR, n_jobs=args.n_jobs))

    # ---- bss_eval alone, per item, both backends, both BLAS configurations
    def bss_all(backend):
        return [bss_eval(est, refs, backend=backend) for est, refs, _ in items]

    t_bss_mir_default, mir_res = _timed(lambda: bss_all("mir_eval"))
    t_bss_fast_default, fast_res = _timed(lambda: bss_all("fast"))
    with blas_threads_limited(1):
        t_bss_mir_1, _ = _timed(lambda: bss_all("mir_eval"))
        t_bss_fast_1, _ = _timed(lambda: bss_all("fast"))
        # SDR of the estimates + SDR of the mixture copies (what SDRi needs), one process
        t_sdri_mir_1, _ = _timed(lambda: [sdr_improvement(*it, "mir_eval") for it in items])
        t_sdri_ours_1, _ = _timed(lambda: [sdr_improvement(*it, "fast") for it in items])

    diff = {
        key: max(
            float(np.max(np.abs(np.subtract(f[key], m[key]))))
            for f, m in zip(fast_res, mir_res, strict=True)
        )
        for key in ("sdr", "sir", "sar")
    }
    perm_agree = sum(f["perm"] == m["perm"] for f, m in zip(fast_res, mir_res, strict=True))
    stage_diff = {
        key: max(abs(o[key] - r[key]) for o, r in zip(our_rows, naive_rows, strict=True))
        for key in ("sdr", "sdri", "sir", "sar", "si_sdr", "si_sdri")
    }
    stage_perm_agree = sum(
        o["perm"] == r["perm"] and o["bss_perm"] == r["bss_perm"]
        for o, r in zip(our_rows, naive_rows, strict=True)
    )

    mir_stage = min(t_naive_default, t_naive_1) / n
    ours_stage = t_ours / n
    bss_mir = min(t_bss_mir_default, t_bss_mir_1) / n
    bss_fast = min(t_bss_fast_default, t_bss_fast_1) / n
    result = {
        "n_items": n,
        "item": f"2 sources, {SECONDS:g} s at {SR} Hz (LibriSpeech test-other sample, "
        "estimates = refs + leakage + white noise, seed 0)",
        "seconds_per_item_mir_eval_stage": mir_stage,
        "seconds_per_item_mir_eval_stage_default_blas": t_naive_default / n,
        "seconds_per_item_mir_eval_stage_1_blas_thread": t_naive_1 / n,
        "mir_eval_stage_method": "one process: mir_eval bss_eval_sources(refs, est) + "
        "bss_eval_sources(refs, [mix, mix]) + PIT SI-SDR/SI-SDRi in numpy; the faster of default "
        "and single-threaded BLAS is reported as seconds_per_item_mir_eval_stage",
        "seconds_per_item_ours_stage": ours_stage,
        "ours_stage_method": f"evaluate_many(n_jobs={args.n_jobs}, metrics={metrics}, "
        "backend='fast'), wall time including process-pool start-up",
        "seconds_per_item_ours_stage_single_process": t_ours_serial / n,
        "speedup_stage": mir_stage / ours_stage,
        "speedup_stage_vs_default_blas_mir_eval": (t_naive_default / n) / ours_stage,
        "speedup_stage_single_process": mir_stage / (t_ours_serial / n),
        "seconds_per_item_ours_full_row": t_ours_full / n,
        "ours_full_row_method": f"evaluate_many(n_jobs={args.n_jobs}) with all metrics "
        "(si_sdr, sdr, pesq nb, stoi)",
        "bss_only_mir_eval_s": bss_mir,
        "bss_only_fast_s": bss_fast,
        "speedup_bss_only": bss_mir / bss_fast,
        "bss_only_detail_s": {
            "mir_eval_default_blas": t_bss_mir_default / n,
            "mir_eval_1_blas_thread": t_bss_mir_1 / n,
            "fast_default_blas": t_bss_fast_default / n,
            "fast_1_blas_thread": t_bss_fast_1 / n,
        },
        "bss_only_method": "bss_eval(est, refs) per item, one process; best BLAS configuration",
        "sdr_and_mixture_sdr_mir_eval_s": t_sdri_mir_1 / n,
        "sdr_and_mixture_sdr_ours_s": t_sdri_ours_1 / n,
        "speedup_sdr_and_mixture_sdr": t_sdri_mir_1 / t_sdri_ours_1,
        "sdr_and_mixture_sdr_method": "sdr_improvement(est, refs, mix, backend) per item, one "
        "process, single-threaded BLAS: mir_eval = two bss_eval_sources calls; ours = one pass "
        "over estimates + mixture (statistics and Gram matrix once, Cholesky)",
        "max_abs_diff_db": diff,
        "perm_agreement_bss_backends": f"{perm_agree}/{n}",
        "max_abs_diff_stage_vs_naive_db": stage_diff,
        "perm_agreement_stage_vs_naive": f"{stage_perm_agree}/{n}",
        "failed_metrics_full_rows": sum(len(r["failed"]) for r in full_rows),
    }
    return write_result(args.out, result, machine)


if __name__ == "__main__":
    main()

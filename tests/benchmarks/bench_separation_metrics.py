"""Benchmark of the separation metric stage: naive mir_eval pipeline vs sepid.separation.metrics.

Usage::

    python tests/benchmarks/bench_separation_metrics.py \\
        [--n_items 20] [--out tests/benchmarks/results/separation_metrics.json] \\
        [--solver_commit 3010bd1]

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

SDR of the estimates + SDR of the mixture (what SDRi needs), one process, single-threaded BLAS,
best of ``--repeats`` interleaved runs: ours (``sdr_improvement(..., backend="fast")``: one
``fast_bss_eval.numpy.square_cosine_metrics`` call on ``[estimates; mixture]``), two
``fast_bss_eval`` ``bss_eval_sources`` calls (estimates, then the mixture copies) and, with
``--solver_commit REV``, the exact one-pass Cholesky solver that ``sepid/metrics/separation.py``
held at ``REV`` (before issue 12 split the module into ``sepid/separation/metrics/``) (loaded with ``git show``; issue 12 kept it only if at least 2x faster than
``fast_bss_eval`` on the same inputs: it was 1.5x, so the one-call path replaced it), each
with its largest difference to mir_eval.
"""

import argparse
import importlib.util
import itertools
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

# sibling module (the script folder is on sys.path)
from bench_common import REPO, machine_info, write_result
from scipy.signal import resample_poly

from sepid.separation.metrics.bss import bss_eval, sdr_improvement
from sepid.separation.metrics.pool import blas_threads_limited, evaluate_many
from sepid.separation.metrics.rows import evaluate_separation

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


def _solver_at(commit):
    """``sepid/metrics/separation.py`` (the module's path until issue 12's reorganisation) as it
    was at ``commit`` (a module, loaded from git)."""
    source = subprocess.run(
        ["git", "show", f"{commit}:sepid/metrics/separation.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "separation_at_commit.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("separation_at_commit", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def _fast_bss_eval_two_calls(est, refs, mix):
    """What a caller of fast_bss_eval's ``bss_eval_sources`` does for SDR and mixture SDR."""
    from fast_bss_eval.numpy import bss_eval_sources

    with np.errstate(divide="ignore"):
        sdr, sir, sar, perm = bss_eval_sources(refs, est, filter_length=512)
        mix_sdr = bss_eval_sources(refs, np.stack([mix] * refs.shape[0]), filter_length=512)[0]
    return {"per_source_sdr": sdr, "sir": sir, "sar": sar, "mixture_sdr": mix_sdr}


def _max_diff_to_mir_eval(rows, reference):
    keys = ("per_source_sdr", "sir", "sar", "mixture_sdr")
    return max(
        float(np.max(np.abs(np.subtract(r[k], m[k]))))
        for r, m in zip(rows, reference, strict=True)
        for k in keys
    )


def _best_interleaved(fns, repeats):
    """``{name: best seconds over repeats}``, the functions run in turn in each repeat."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn)[0])
    return {name: min(t) for name, t in times.items()}


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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--solver_commit",
        default=None,
        help="also time the exact one-pass solver of sepid/metrics/separation.py at this commit",
    )
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
        t_sdri_mir_1, sdri_mir = _timed(lambda: [sdr_improvement(*it, "mir_eval") for it in items])
        sdri_fns = {
            "ours": lambda: [sdr_improvement(*it, "fast") for it in items],
            "fast_bss_eval_two_calls": lambda: [_fast_bss_eval_two_calls(*it) for it in items],
        }
        if args.solver_commit:
            old = _solver_at(args.solver_commit)
            sdri_fns["exact_solver"] = lambda: [old.sdr_improvement(*it, "fast") for it in items]
        sdri_rows = {name: fn() for name, fn in sdri_fns.items()}  # also the warm-up
        sdri_best = _best_interleaved(sdri_fns, args.repeats)
    t_sdri_ours_1 = sdri_best["ours"]

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
        "sdr_and_mixture_sdr_fast_bss_eval_two_calls_s": sdri_best["fast_bss_eval_two_calls"] / n,
        "sdr_and_mixture_sdr_method": "per item, one process, single-threaded BLAS, best of "
        f"{args.repeats} interleaved runs (mir_eval: one run): mir_eval = sdr_improvement(est, "
        "refs, mix, 'mir_eval'), two bss_eval_sources calls; ours = sdr_improvement(..., "
        "'fast'), one fast_bss_eval.numpy.square_cosine_metrics call on [estimates; mixture]; "
        "fast_bss_eval_two_calls = fast_bss_eval.numpy.bss_eval_sources(refs, est) + "
        "bss_eval_sources(refs, [mix, mix])",
        "sdr_and_mixture_sdr_max_abs_diff_to_mir_eval_db": {
            name: _max_diff_to_mir_eval(rows, sdri_mir) for name, rows in sdri_rows.items()
        },
        **(
            {
                "exact_solver_commit": args.solver_commit,
                "sdr_and_mixture_sdr_exact_solver_s": sdri_best["exact_solver"] / n,
                "speedup_exact_solver_vs_fast_bss_eval_same_inputs": sdri_best["ours"]
                / sdri_best["exact_solver"],
                "speedup_exact_solver_vs_fast_bss_eval_two_calls": sdri_best[
                    "fast_bss_eval_two_calls"
                ]
                / sdri_best["exact_solver"],
                "exact_solver_method": "sdr_improvement(..., 'fast') of sepid/metrics/"
                f"separation.py at {args.solver_commit} (git show): FFT statistics, Gram matrix "
                "of [estimates; mixture] built once, Cholesky; deleted by issue 12 (kept only "
                "if >= 2x faster than fast_bss_eval on the same inputs)",
            }
            if args.solver_commit
            else {}
        ),
        "max_abs_diff_db": diff,
        "perm_agreement_bss_backends": f"{perm_agree}/{n}",
        "max_abs_diff_stage_vs_naive_db": stage_diff,
        "perm_agreement_stage_vs_naive": f"{stage_perm_agree}/{n}",
        "failed_metrics_full_rows": sum(len(r["failed"]) for r in full_rows),
    }
    return write_result(args.out, result, machine)


if __name__ == "__main__":
    main()

"""Tests of sepid.separation.metrics (SI-SDR, BSS-eval SDR/SIR/SAR, PESQ, STOI, rows, summaries)."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly
from threadpoolctl import threadpool_info, threadpool_limits

from sepid.separation.metrics.bss import bss_eval, sdr_improvement
from sepid.separation.metrics.inputs import UndefinedMetricError
from sepid.separation.metrics.perceptual import pesq_score, stoi_score
from sepid.separation.metrics.pool import _metric_pool, blas_threads_limited, evaluate_many
from sepid.separation.metrics.rows import evaluate_separation, summarize
from sepid.separation.metrics.sisdr import pit_si_sdr, si_sdr, si_sdr_improvement

SR = 8000
SAMPLES = Path(__file__).resolve().parents[1] / "samples/librispeech-mini/test-other"
UTT_A = SAMPLES / "1688/1688-142285-0002.flac"  # 2.8 s, speaker 1688
UTT_B = SAMPLES / "1998/1998-15444-0002.flac"  # another speaker


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    """mir_eval's 1024x1024 solves are much slower with multi-threaded OpenBLAS on a busy box."""
    with blas_threads_limited(1):
        yield


def _speech(path, seconds=None, sr=SR):
    """A LibriSpeech utterance (16 kHz flac), resampled to ``sr`` and cut to ``seconds``."""
    x, file_sr = sf.read(path, dtype="float64")
    assert file_sr == 16000
    if sr != 16000:
        x = resample_poly(x, sr, 16000)
    if seconds is not None:
        n = int(seconds * sr)
        assert x.shape[0] >= n, f"{path} is shorter than {seconds} s"
        x = x[:n]
    return x


def _noise_sources(n_src=2, seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_src, int(seconds * SR)))


def _realistic_item(seed, seconds=2.0):
    """Two speech references, estimates = reference + leakage of the other + white noise."""
    rng = np.random.default_rng(seed)
    a, b = _speech(UTT_A, seconds), _speech(UTT_B, seconds)
    refs = np.stack([a / a.std(), b / b.std()]) * rng.uniform(0.05, 0.2, size=(2, 1))
    leak = rng.uniform(0.05, 0.4, size=(2, 1))
    noise = rng.uniform(0.005, 0.05) * rng.standard_normal(refs.shape)
    est = refs + leak * refs[::-1] + noise
    return est, refs, refs.sum(axis=0)


def _orthogonal_to(s, rng):
    """A zero-mean random vector orthogonal to the zero-mean vector ``s``."""
    g = rng.standard_normal(s.shape[0])
    g -= g.mean()
    return g - (g @ s) / (s @ s) * s


# ---------------------------------------------------------------------------------- SI-SDR


def test_si_sdr_hand_computed():
    rng = np.random.default_rng(1)
    s = rng.standard_normal(SR)
    s -= s.mean()
    e = _orthogonal_to(s, rng)
    # estimate = s + e, e _|_ s, ||e||^2 = ||s||^2 / 10:
    #   alpha = <s + e, s> / ||s||^2 = 1 -> s_target = s, error = e
    #   SI-SDR = 10 log10(||s||^2 / (||s||^2 / 10)) = 10 log10(10) = 10 dB
    e10 = e * np.sqrt((s @ s) / 10 / (e @ e))
    assert si_sdr(s + e10, s) == pytest.approx(10.0, abs=1e-6)
    # estimate = 2 s + e, ||e||^2 = ||s||^2:
    #   alpha = 2 -> s_target = 2 s, ||s_target||^2 = 4 ||s||^2, error = e
    #   SI-SDR = 10 log10(4 ||s||^2 / ||s||^2) = 10 log10(4) = 6.0206 dB
    e1 = e * np.sqrt((s @ s) / (e @ e))
    assert si_sdr(2 * s + e1, s) == pytest.approx(10 * np.log10(4), abs=1e-6)
    # estimate = 0.5 s + e, ||e||^2 = ||s||^2: ||s_target||^2 = ||s||^2 / 4 -> -6.0206 dB
    assert si_sdr(0.5 * s + e1, s) == pytest.approx(-10 * np.log10(4), abs=1e-6)
    # a sign flip and a DC offset change nothing (alpha = -1; both signals are made zero-mean)
    assert si_sdr(-(s + e10) + 3.0, s) == pytest.approx(10.0, abs=1e-6)
    # estimate = s + e with ||e||^2 = 100 ||s||^2 -> 10 log10(1/100) = -20 dB
    e100 = e * np.sqrt(100 * (s @ s) / (e @ e))
    assert si_sdr(s + e100, s) == pytest.approx(-20.0, abs=1e-5)
    # estimate orthogonal to the reference (s_target = 0) or silent: the eps floor,
    # 10 log10(0 / (||e||^2 + eps) + eps) = 10 log10(1e-8) = -80 dB, not -inf
    assert si_sdr(e, s) == pytest.approx(-80.0, abs=1e-9)
    assert si_sdr(np.zeros_like(s), s) == pytest.approx(-80.0, abs=1e-9)


def test_perfect_estimate_gives_very_high_si_sdr_and_sdr():
    refs = _noise_sources(seed=2)
    assert si_sdr(refs[0], refs[0]) > 100
    per_source, perm = pit_si_sdr(refs.copy(), refs)
    assert perm.tolist() == [0, 1]
    assert np.all(per_source > 100)
    for backend in ("fast", "mir_eval"):
        res = bss_eval(refs.copy(), refs, backend=backend)
        assert res["perm"] == [0, 1]
        assert np.all(np.asarray(res["sdr"]) > 100), (backend, res)


def test_scaling_the_estimate_leaves_si_sdr_unchanged():
    est, refs, _ = _realistic_item(seed=3, seconds=1.0)
    base = si_sdr(est[0], refs[0])
    for c in (1e-3, 0.5, 3.0, -2.0):
        assert si_sdr(c * est[0], refs[0]) == pytest.approx(base, abs=1e-6)
    # and of the reference as well
    assert si_sdr(est[0], 7.0 * refs[0]) == pytest.approx(base, abs=1e-6)


def test_swapping_estimates_gives_same_numbers_and_flipped_perm():
    est, refs, mix = _realistic_item(seed=4)
    swapped = est[::-1].copy()
    v1, p1 = pit_si_sdr(est, refs)
    v2, p2 = pit_si_sdr(swapped, refs)
    assert p1.tolist() == [0, 1] and p2.tolist() == [1, 0]
    np.testing.assert_allclose(v1, v2, atol=1e-12)
    b1, b2 = bss_eval(est, refs), bss_eval(swapped, refs)
    assert b1["perm"] == [0, 1] and b2["perm"] == [1, 0]
    for key in ("sdr", "sir", "sar"):
        np.testing.assert_allclose(b1[key], b2[key], atol=1e-6)
    r1 = evaluate_separation(est, refs, mix, SR, metrics=("si_sdr", "sdr"))
    r2 = evaluate_separation(swapped, refs, mix, SR, metrics=("si_sdr", "sdr"))
    assert r1["perm"] == [0, 1] and r2["perm"] == [1, 0] and r2["bss_perm"] == [1, 0]
    for key in ("si_sdr", "si_sdri", "sdr", "sdri", "sir", "sar", "si_sdr_s2", "sdr_s1"):
        assert r1[key] == pytest.approx(r2[key], abs=1e-6)


def test_three_sources_perm_is_estimate_index_per_reference():
    # estimate j is a noisy copy of reference (j + 1) % 3, so reference i is estimated by
    # estimate (i - 1) % 3: perm = [2, 0, 1] (its inverse [1, 2, 0] would be wrong)
    refs = _noise_sources(n_src=3, seconds=0.5, seed=5)
    rng = np.random.default_rng(6)
    est = refs[[1, 2, 0]] + 0.1 * rng.standard_normal(refs.shape)
    _, perm = pit_si_sdr(est, refs)
    assert perm.tolist() == [2, 0, 1]
    fast = bss_eval(est, refs, backend="fast")
    ref_impl = bss_eval(est, refs, backend="mir_eval")
    assert fast["perm"] == ref_impl["perm"] == [2, 0, 1]
    np.testing.assert_allclose(fast["sir"], ref_impl["sir"], atol=0.01)


def test_mixture_as_estimates_gives_zero_improvement():
    _, refs, mix = _realistic_item(seed=7)
    est = np.stack([mix, mix])
    res = si_sdr_improvement(est, refs, mix)
    assert res["si_sdri"] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(res["per_source_si_sdri"], 0.0, atol=1e-9)
    for backend in ("fast", "mir_eval"):
        res = sdr_improvement(est, refs, mix, backend=backend)
        assert res["sdri"] == pytest.approx(0.0, abs=1e-6), backend
        np.testing.assert_allclose(res["per_source_sdri"], 0.0, atol=1e-6)


def test_mixture_sdr_is_bss_eval_of_mixture_copies():
    est, refs, mix = _realistic_item(seed=8)
    res = sdr_improvement(est, refs, mix, backend="fast")
    copies = bss_eval(np.stack([mix, mix]), refs, backend="fast")
    np.testing.assert_allclose(res["mixture_sdr"], copies["sdr"], atol=1e-6)
    alone = bss_eval(est, refs, backend="fast")
    np.testing.assert_allclose(res["per_source_sdr"], alone["sdr"], atol=1e-6)
    np.testing.assert_allclose(res["sir"], alone["sir"], atol=1e-6)
    assert res["perm"] == alone["perm"]


# ------------------------------------------------------------------------- BSS-eval backends


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_fast_backend_agrees_with_mir_eval(seed):
    est, refs, mix = _realistic_item(seed)
    if seed == 11:
        est = est[::-1].copy()
    fast = sdr_improvement(est, refs, mix, backend="fast")
    ref_impl = sdr_improvement(est, refs, mix, backend="mir_eval")
    assert fast["perm"] == ref_impl["perm"] == ([1, 0] if seed == 11 else [0, 1])
    for key in ("per_source_sdr", "sir", "sar", "mixture_sdr", "per_source_sdri"):
        np.testing.assert_allclose(fast[key], ref_impl[key], atol=0.01, err_msg=key)


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_fast_backend_matches_mir_eval_to_1e_9_db_on_speech(seed):
    # the "fast" path (one fast_bss_eval square_cosine_metrics call on estimates + mixture)
    # solves the same least-squares problems as mir_eval: same numbers, not just close ones
    est, refs, mix = _realistic_item(seed)
    if seed == 11:
        est = est[::-1].copy()
    fast = sdr_improvement(est, refs, mix, backend="fast")
    ref_impl = sdr_improvement(est, refs, mix, backend="mir_eval")
    for key in ("per_source_sdr", "sir", "sar", "mixture_sdr", "per_source_sdri"):
        np.testing.assert_allclose(fast[key], ref_impl[key], rtol=0, atol=1e-9, err_msg=key)


def test_rank_deficient_references_fall_back_and_still_agree():
    # sums of sinusoids: the Gram matrix of the delayed references is singular, so the
    # one-pass Cholesky solve falls back to LU as fast_bss_eval / mir_eval do
    t = np.arange(SR) / SR
    refs = np.stack(
        [
            np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 660 * t),
            np.sin(2 * np.pi * 300 * t),
        ]
    )
    est = refs + 0.1 * refs[::-1]
    fast = sdr_improvement(est, refs, refs.sum(0), backend="fast")
    ref_impl = sdr_improvement(est, refs, refs.sum(0), backend="mir_eval")
    np.testing.assert_allclose(fast["per_source_sdr"], ref_impl["per_source_sdr"], atol=0.01)
    np.testing.assert_allclose(fast["mixture_sdr"], ref_impl["mixture_sdr"], atol=0.01)


def test_mir_eval_backend_matches_direct_call_without_deprecation_warning():
    import mir_eval.separation

    est, refs, _ = _realistic_item(seed=13, seconds=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = bss_eval(est, refs, backend="mir_eval")
    assert not [w for w in caught if issubclass(w.category, FutureWarning | DeprecationWarning)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdr, sir, sar, perm = mir_eval.separation.bss_eval_sources(refs, est)
    np.testing.assert_allclose(ours["sdr"], sdr, atol=1e-9)
    np.testing.assert_allclose(ours["sir"], sir, atol=1e-9)
    np.testing.assert_allclose(ours["sar"], sar, atol=1e-9)
    assert ours["perm"] == perm.tolist()


@pytest.mark.parametrize("backend", ["fast", "mir_eval"])
def test_only_the_passed_estimates_are_evaluated(backend):
    # The flawed pattern evaluated [estimate_1, reference_2] as the "estimates": source 2 then
    # looks perfectly separated and its SIR (and the mean SIR) is inflated. Our function only
    # scores what it is given: the SIR of estimate 1 is the same in both calls (it depends on
    # estimate 1 and all references only), the SIR of source 2 is not.
    est, refs, _ = _realistic_item(seed=14, seconds=1.0)
    ours = bss_eval(est, refs, backend=backend)
    flawed = bss_eval(np.stack([est[0], refs[1]]), refs, backend=backend)
    assert ours["perm"] == flawed["perm"] == [0, 1]
    assert ours["sir"][0] == pytest.approx(flawed["sir"][0], abs=1e-6)
    assert flawed["sir"][1] > 100 > ours["sir"][1] + 50
    assert np.mean(flawed["sir"]) > np.mean(ours["sir"]) + 40


# --------------------------------------------------------------------- undefined / missing


def test_silent_reference_raises_undefined_metric_error():
    est, refs, mix = _realistic_item(seed=15, seconds=1.0)
    refs[1] = 0.0
    with pytest.raises(UndefinedMetricError, match="silent reference"):
        si_sdr(est[1], refs[1])
    with pytest.raises(ValueError, match="silent reference"):  # it is a ValueError
        pit_si_sdr(est, refs)
    for backend in ("fast", "mir_eval"):
        with pytest.raises(UndefinedMetricError, match="silent reference"):
            bss_eval(est, refs, backend=backend)
    with pytest.raises(UndefinedMetricError, match="silent estimate"):
        bss_eval(np.stack([est[0], np.zeros_like(est[0])]), _realistic_item(15, 1.0)[1])


def test_evaluate_separation_records_failures_and_summarize_counts_them():
    good = evaluate_separation(*_realistic_item(seed=16, seconds=1.0), SR, metrics=("si_sdr",))
    est, refs, mix = _realistic_item(seed=17, seconds=1.0)
    refs[1] = 0.0
    bad = evaluate_separation(est, refs, mix, SR)  # all metrics
    for key in ("si_sdr", "si_sdri", "sdr", "sdri", "sir", "sar", "pesq", "stoi", "si_sdr_s1"):
        assert bad[key] is None, key
        assert key in bad["failed"], key
    assert bad["perm"] is None and bad["bss_perm"] is None
    assert "silent reference" in bad["errors"]["si_sdr"]
    assert good["failed"] == [] and good["errors"] == {}
    assert np.isfinite(good["si_sdr"])

    summary = summarize([good, bad, good], ["si_sdr", "si_sdri"])
    assert summary["si_sdr"]["n"] == 2
    assert summary["si_sdr"]["n_missing"] == 1
    assert summary["si_sdr"]["mean"] == pytest.approx(good["si_sdr"])
    assert summary["si_sdr"]["std"] == pytest.approx(0.0, abs=1e-12)


def test_summarize_known_values():
    rows = [{"x": 1.0}, {"x": None}, {"x": 2.0}, {"x": 6.0}]
    s = summarize(rows, ["x"])["x"]
    assert s == {"mean": 3.0, "median": 2.0, "std": pytest.approx(np.std([1, 2, 6])), "n": 3,
                 "n_missing": 1}  # fmt: skip
    empty = summarize([{"x": None}], ["x"])["x"]
    assert empty["n"] == 0 and empty["n_missing"] == 1 and empty["mean"] is None
    with pytest.raises(ValueError, match="NaN"):
        summarize([{"x": float("nan")}], ["x"])
    with pytest.raises(ValueError, match="has no 'y'"):
        summarize(rows, ["y"])


# ------------------------------------------------------------------------------ PESQ / STOI


def test_pesq_and_stoi_on_speech():
    ref = _speech(UTT_A)  # 8 kHz
    assert pesq_score(ref, ref, SR) > 4.0  # narrow-band, identical
    rng = np.random.default_rng(18)
    noisy = ref + 0.3 * ref.std() * rng.standard_normal(ref.shape)  # about 10 dB SNR
    p_noisy = pesq_score(noisy, ref, SR)
    assert p_noisy < 3.0
    assert stoi_score(ref, ref, SR) == pytest.approx(1.0, abs=1e-6)
    assert stoi_score(noisy, ref, SR) < 0.95
    ref16 = _speech(UTT_A, sr=16000)
    assert pesq_score(ref16, ref16, 16000) > 4.5  # wide-band
    ref12 = _speech(UTT_A, sr=12000)  # resampled to 16 kHz inside
    assert pesq_score(ref12, ref12, 12000) > 4.5


def test_pesq_silence_raises_and_is_recorded_as_missing():
    ref = _speech(UTT_A, seconds=2.0)
    with pytest.raises(UndefinedMetricError, match="PESQ"):
        pesq_score(ref, np.zeros_like(ref), SR)
    with pytest.raises(UndefinedMetricError, match="PESQ"):
        pesq_score(np.zeros_like(ref), ref, SR)
    other = _speech(UTT_B, seconds=2.0)
    refs = np.stack([ref, other])
    est = np.stack([ref + 0.01 * other, np.zeros_like(other)])  # second output silent
    row = evaluate_separation(est, refs, refs.sum(0), SR, metrics=("pesq", "stoi"))
    assert row["perm"] == [0, 1]
    assert row["pesq_s1"] > 3.5
    assert row["pesq_s2"] is None and row["pesq"] is None
    assert "pesq" in row["failed"] and "pesq_s2" in row["failed"]
    assert "source 2" in row["errors"]["pesq"]
    assert row["stoi"] is not None and "stoi" not in row["failed"]
    assert "si_sdr" not in row and "sdr" not in row  # only what was asked for


def test_evaluate_separation_row_is_consistent_with_single_metrics():
    est, refs, mix = _realistic_item(seed=19)
    row = evaluate_separation(est, refs, mix, SR)
    assert row["failed"] == []
    imp = si_sdr_improvement(est, refs, mix)
    sdri = sdr_improvement(est, refs, mix)
    assert row["perm"] == imp["perm"] and row["bss_perm"] == sdri["perm"]
    assert row["si_sdr"] == pytest.approx(imp["si_sdr"], abs=1e-9)
    assert row["si_sdri"] == pytest.approx(imp["si_sdri"], abs=1e-9)
    assert row["sdri"] == pytest.approx(sdri["sdri"], abs=1e-9)
    assert row["sir_s2"] == pytest.approx(sdri["sir"][1], abs=1e-9)
    assert row["pesq_s1"] == pytest.approx(pesq_score(est[0], refs[0], SR), abs=1e-6)
    assert row["stoi_s2"] == pytest.approx(stoi_score(est[1], refs[1], SR), abs=1e-9)
    assert row["pesq"] == pytest.approx((row["pesq_s1"] + row["pesq_s2"]) / 2)


def test_evaluate_many_matches_serial():
    items = [_realistic_item(seed, seconds=1.0) for seed in (20, 21, 22)]
    metrics = ("si_sdr", "sdr")
    parallel = evaluate_many(items, SR, n_jobs=2, metrics=metrics)
    serial = [evaluate_separation(*item, SR, metrics=metrics) for item in items]
    assert len(parallel) == 3
    for p, s in zip(parallel, serial, strict=True):
        assert p.keys() == s.keys()
        for key in ("si_sdr", "sdr", "sdri", "sir"):
            assert p[key] == pytest.approx(s[key], abs=1e-9)


def _blas_threads():
    """``{library path: BLAS threads}`` of the BLAS libraries loaded in this process."""
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


@pytest.mark.parametrize("mp_context", ["fork", "spawn"])
def test_metric_pool_workers_run_single_threaded_blas(mp_context, monkeypatch):
    # the parent runs 2 BLAS threads and a spawned worker would start with 2 (the environment the
    # suite may run with says 1), so a worker only has 1 if the pool set it
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with threadpool_limits(limits=2, user_api="blas"):
        assert _blas_threads() and set(_blas_threads().values()) == {2}
        with _metric_pool(2, blas_threads=1, mp_context=mp_context) as pool:
            workers = [pool.submit(_blas_threads).result() for _ in range(2)]
        assert set(_blas_threads().values()) == {2}  # the parent's limit is untouched
    for worker in workers:
        assert worker, "no BLAS library found in the worker: the test would prove nothing"
        assert set(worker.values()) == {1}, worker


def test_blas_threads_limited_restores_the_previous_limit():
    with threadpool_limits(limits=2, user_api="blas"):
        with blas_threads_limited(1):
            assert set(_blas_threads().values()) == {1}
        assert set(_blas_threads().values()) == {2}


# ------------------------------------------------------------------------------ validation


def test_invalid_inputs_raise_clear_value_errors():
    est, refs, mix = _realistic_item(seed=23, seconds=1.0)
    with pytest.raises(ValueError, match="wrong number of sources"):
        pit_si_sdr(est[:1], refs)
    with pytest.raises(ValueError, match="same length"):
        bss_eval(est[:, :-1], refs)
    with pytest.raises(ValueError, match="2-D"):
        bss_eval(est[0], refs[0])
    with pytest.raises(ValueError, match="mixture has"):
        si_sdr_improvement(est, refs, mix[:-5])
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_separation(est, refs, mix, SR, metrics=("sisdr",))
    with pytest.raises(ValueError, match="backend"):
        bss_eval(est, refs, backend="torch")
    with pytest.raises(ValueError, match="NaN"):
        si_sdr(np.full(100, np.nan), np.ones(100))

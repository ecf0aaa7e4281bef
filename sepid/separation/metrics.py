"""Permutation-invariant speech-separation metrics, computed as the literature defines them.

Inputs are float arrays at one sample rate (named by the caller): ``estimates [n_src, T]``,
``references [n_src, T]`` and ``mixture [T]``. Everything is computed in float64. A permutation
``perm`` always has the meaning of ``mir_eval``'s: ``perm[i]`` is the index of the *estimate*
assigned to *reference* ``i``, so ``estimates[perm[i]]`` is scored against ``references[i]``.

Metrics
-------
* SI-SDR (Le Roux, Wisdom, Erdogan, Hershey, "SDR - half-baked or well done?", ICASSP 2019):
  :func:`si_sdr`, :func:`pit_si_sdr` (permutation maximising the mean SI-SDR) and
  :func:`si_sdr_improvement` (SI-SDRi with respect to the mixture).
* BSS-eval v3 ``bss_eval_sources`` (Vincent, Gribonval, Fevotte, IEEE TASLP 2006): SDR, SIR and
  SAR with 512-tap time-invariant distortion filters, permutation maximising the mean SIR (as
  ``mir_eval.separation.bss_eval_sources`` and the BSS_EVAL Matlab toolbox choose it):
  :func:`bss_eval` and :func:`sdr_improvement`. Two backends give the same numbers (about 1e-12
  dB apart on realistic speech items, see ``tests/benchmarks/bench_separation_metrics.py``):
  ``"fast"`` (``fast_bss_eval.numpy``: the same least-squares problems solved from FFT
  correlation statistics) and ``"mir_eval"`` (the reference implementation, which re-builds and
  solves the Gram system of the delayed references for every estimate/reference pair). With
  ``"fast"``, :func:`sdr_improvement` and :func:`evaluate_separation` score the estimates and the
  mixture in one ``fast_bss_eval.numpy.square_cosine_metrics`` call (reference statistics and
  Gram matrix built once).
* PESQ (ITU-T P.862 / P.862.2, ``pesq`` package): :func:`pesq_score`.
* STOI / ESTOI (``pystoi``): :func:`stoi_score`.

:func:`evaluate_separation` computes a full row for one item (each metric once), and
:func:`evaluate_many` runs it over many items in a process pool; :func:`summarize` aggregates
rows. A metric that is undefined for an item (silent reference, PESQ finding no utterance, ...)
raises :class:`UndefinedMetricError` in the single-metric functions and is recorded as ``None``
(and listed in the row's ``"failed"``) by :func:`evaluate_separation`; it is never replaced by
zero or NaN.
"""

import contextlib
import itertools
import logging
import math
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from math import gcd

import numpy as np
from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)

__all__ = [
    "UndefinedMetricError",
    "blas_threads_limited",
    "bss_eval",
    "evaluate_many",
    "evaluate_separation",
    "pesq_score",
    "pit_si_sdr",
    "si_sdr",
    "si_sdr_improvement",
    "sdr_improvement",
    "stoi_score",
    "summarize",
]

#: Length of the BSS-eval v3 distortion filters (``bss_eval_sources``).
BSS_FILTER_LENGTH = 512
#: Energy (sum of squares) at or below which a signal counts as silent for BSS-eval.
SILENCE_ENERGY = 1e-8
#: Metric groups accepted by :func:`evaluate_separation`.
METRICS = ("si_sdr", "sdr", "pesq", "stoi")
_BACKENDS = ("fast", "mir_eval")
#: Largest number of sources for which permutations are enumerated exhaustively.
_MAX_EXHAUSTIVE_SRC = 8


class UndefinedMetricError(ValueError):
    """A metric is mathematically undefined (or its reference implementation refuses) for an item.

    Raised for example for a silent reference (SI-SDR, SDR), a silent estimate (SDR: the
    BSS-eval projection is underdetermined) or when PESQ detects no utterance. Callers that
    evaluate many items record the value as missing instead of inventing one.
    """


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _as_float64(x, name):
    """Converts an array-like / torch tensor to a float64 numpy array (without importing torch)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} cannot be converted to a float array: {err}") from err
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_signal_pair(estimate, reference):
    est = _as_float64(estimate, "estimate")
    ref = _as_float64(reference, "reference")
    if est.ndim != 1 or ref.ndim != 1:
        raise ValueError(
            f"estimate and reference must be 1-D signals [T], got shapes {est.shape} and "
            f"{ref.shape}"
        )
    if est.shape != ref.shape:
        raise ValueError(
            f"estimate and reference must have the same length, got {est.shape[0]} and "
            f"{ref.shape[0]} samples"
        )
    if est.shape[0] == 0:
        raise ValueError("estimate and reference are empty")
    return est, ref


def _check_sources(estimates, references, mixture=None):
    """Validates ``[n_src, T]`` estimates / references and an optional ``[T]`` mixture."""
    est = _as_float64(estimates, "estimates")
    ref = _as_float64(references, "references")
    if est.ndim != 2 or ref.ndim != 2:
        raise ValueError(
            f"estimates and references must be 2-D arrays [n_src, T], got shapes {est.shape} "
            f"and {ref.shape}"
        )
    if est.shape[0] != ref.shape[0]:
        raise ValueError(
            f"wrong number of sources: {est.shape[0]} estimate(s) for {ref.shape[0]} "
            f"reference(s) (shapes {est.shape} and {ref.shape})"
        )
    if est.shape[1] != ref.shape[1]:
        raise ValueError(
            f"estimates and references must have the same length, got {est.shape[1]} and "
            f"{ref.shape[1]} samples (shapes {est.shape} and {ref.shape})"
        )
    if est.shape[0] == 0 or est.shape[1] == 0:
        raise ValueError(f"estimates / references are empty (shape {est.shape})")
    if mixture is None:
        return est, ref
    mix = _as_float64(mixture, "mixture")
    if mix.ndim != 1:
        raise ValueError(f"mixture must be a 1-D signal [T], got shape {mix.shape}")
    if mix.shape[0] != ref.shape[1]:
        raise ValueError(f"mixture has {mix.shape[0]} samples but the sources have {ref.shape[1]}")
    return est, ref, mix


def _check_backend(backend):
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")


# --------------------------------------------------------------------------------------------
# SI-SDR
# --------------------------------------------------------------------------------------------


def _pairwise_si_sdr(estimates, references, eps):
    """SI-SDR of every (reference i, estimate j) pair: matrix ``[n_ref, n_est]`` in dB."""
    n_samples = references.shape[-1]
    est = estimates - estimates.mean(axis=-1, keepdims=True)
    ref = references - references.mean(axis=-1, keepdims=True)
    ref_energy = np.einsum("it,it->i", ref, ref)
    silent = np.flatnonzero(ref_energy <= eps)
    if silent.size:
        raise UndefinedMetricError(
            f"SI-SDR is undefined for a silent reference: reference source(s) "
            f"{silent.tolist()} have energy <= {eps:g} after mean removal"
        )
    # Rescale both to unit mean power (energy = T): the ratio is unchanged, and eps then acts
    # on a scale-free problem, so the result is exactly scale-invariant.
    ref = ref * np.sqrt(n_samples / ref_energy)[:, None]
    est_energy = np.einsum("it,it->i", est, est)
    gain = np.sqrt(
        np.divide(n_samples, est_energy, out=np.zeros_like(est_energy), where=est_energy > 0)
    )
    est = est * gain[:, None]  # a silent estimate stays all-zero
    alpha = (ref @ est.T) / n_samples  # [n_ref, n_est] optimal scaling <s_hat, s> / ||s||^2
    target = alpha[:, :, None] * ref[:, None, :]  # s_target = alpha * s
    error = est[None, :, :] - target  # e = s_hat - s_target
    target_energy = np.einsum("ijt,ijt->ij", target, target)
    error_energy = np.einsum("ijt,ijt->ij", error, error)
    return 10.0 * np.log10(target_energy / (error_energy + eps) + eps)


def si_sdr(estimate, reference, eps=1e-8):
    """Scale-invariant signal-to-distortion ratio, in dB (Le Roux et al., ICASSP 2019).

    Both signals are made zero-mean, the estimate is projected on the reference,
    ``s_target = (<s_hat, s> / ||s||^2) s`` and ``e = s_hat - s_target``, and
    ``SI-SDR = 10 log10(||s_target||^2 / ||e||^2)``.

    Parameters
    ----------
    estimate, reference : array-like, shape [T]
        Estimated and reference signals (same sample rate and length).
    eps : float
        Numerical guard, as in Asteroid / SpeechBrain (``10 log10(||s_target||^2 /
        (||e||^2 + eps) + eps)``), applied after both zero-mean signals are rescaled to unit mean
        power (energy ``T``; this leaves the ratio unchanged, so the result is exactly
        scale-invariant and equals Asteroid's value for unit-power inputs). It only bounds the
        result: a perfect estimate gives ``10 log10(T / eps)`` (119 dB for 1 s at 8 kHz) instead
        of ``+inf``, an estimate orthogonal to the reference or silent gives
        ``10 log10(eps) = -80`` dB instead of ``-inf``. A reference whose zero-mean energy
        (sum of squares) is ``<= eps`` counts as silent.

    Returns
    -------
    float
        SI-SDR in dB.

    Raises
    ------
    UndefinedMetricError
        If the reference is silent (SI-SDR is undefined: there is nothing to project on).
    ValueError
        On shape mismatch or non-finite input.
    """
    est, ref = _check_signal_pair(estimate, reference)
    return float(_pairwise_si_sdr(est[None], ref[None], eps)[0, 0])


def _best_permutation(score):
    """Permutation maximising the mean of ``score[i, perm[i]]`` (first one on ties).

    ``score`` is ``[n_ref, n_est]``; permutations are enumerated in ``itertools`` order (as
    ``mir_eval`` does) for up to ``_MAX_EXHAUSTIVE_SRC`` sources, otherwise the Hungarian
    algorithm gives the same optimum.
    """
    n = score.shape[0]
    if n > _MAX_EXHAUSTIVE_SRC:
        from scipy.optimize import linear_sum_assignment

        _, cols = linear_sum_assignment(score, maximize=True)
        return np.asarray(cols, dtype=np.int64)
    rows = np.arange(n)
    best, best_value = None, -np.inf
    for perm in itertools.permutations(range(n)):
        value = score[rows, perm].mean()
        if best is None or value > best_value:
            best, best_value = perm, value
    return np.asarray(best, dtype=np.int64)


def pit_si_sdr(estimates, references, eps=1e-8):
    """Permutation-invariant SI-SDR.

    Parameters
    ----------
    estimates, references : array-like, shape [n_src, T]
    eps : float
        See :func:`si_sdr`.

    Returns
    -------
    per_source : np.ndarray, shape [n_src]
        ``si_sdr(estimates[perm[i]], references[i])`` for each reference ``i``.
    perm : np.ndarray of int, shape [n_src]
        ``perm[i]`` is the index of the estimate assigned to reference ``i``, chosen to maximise
        the mean SI-SDR (first permutation in ``itertools.permutations`` order on ties).

    Raises
    ------
    UndefinedMetricError
        If a reference is silent.
    ValueError
        On shape mismatch / wrong number of sources.
    """
    est, ref = _check_sources(estimates, references)
    matrix = _pairwise_si_sdr(est, ref, eps)
    perm = _best_permutation(matrix)
    return matrix[np.arange(len(perm)), perm], perm


def _si_sdr_improvement(est, ref, mix, eps):
    per_source, perm = pit_si_sdr(est, ref, eps)
    mixture_si_sdr = _pairwise_si_sdr(mix[None], ref, eps)[:, 0]
    improvement = per_source - mixture_si_sdr
    return {
        "si_sdr": float(per_source.mean()),
        "si_sdri": float(improvement.mean()),
        "per_source": per_source.tolist(),
        "per_source_si_sdri": improvement.tolist(),
        "mixture_si_sdr": mixture_si_sdr.tolist(),
        "perm": perm.tolist(),
    }


def si_sdr_improvement(estimates, references, mixture, eps=1e-8):
    """SI-SDR and SI-SDR improvement over the mixture, under the best permutation.

    Parameters
    ----------
    estimates, references : array-like, shape [n_src, T]
    mixture : array-like, shape [T]
    eps : float
        See :func:`si_sdr`.

    Returns
    -------
    dict
        ``"si_sdr"``: mean over sources of ``si_sdr(estimates[perm[i]], references[i])``;
        ``"si_sdri"``: mean over sources of
        ``si_sdr(estimates[perm[i]], references[i]) - si_sdr(mixture, references[i])``;
        ``"per_source"``: the per-source SI-SDR (list, reference order);
        ``"per_source_si_sdri"``, ``"mixture_si_sdr"``: per-source improvement and mixture
        SI-SDR; ``"perm"``: the permutation of :func:`pit_si_sdr` (list).

    Raises
    ------
    UndefinedMetricError
        If a reference is silent.
    """
    est, ref, mix = _check_sources(estimates, references, mixture)
    return _si_sdr_improvement(est, ref, mix, eps)


# --------------------------------------------------------------------------------------------
# BSS-eval (SDR / SIR / SAR)
# --------------------------------------------------------------------------------------------


def _check_bss_inputs(est, ref, what="estimate"):
    """Raises UndefinedMetricError where bss_eval_sources is undefined for these signals."""
    n_samples = ref.shape[-1]
    if n_samples < BSS_FILTER_LENGTH:
        raise UndefinedMetricError(
            f"BSS-eval needs signals of at least {BSS_FILTER_LENGTH} samples (the distortion "
            f"filter length), got {n_samples}"
        )
    silent_ref = np.flatnonzero(np.einsum("it,it->i", ref, ref) <= SILENCE_ENERGY)
    if silent_ref.size:
        raise UndefinedMetricError(
            f"SDR/SIR/SAR are undefined for a silent reference: reference source(s) "
            f"{silent_ref.tolist()} have energy <= {SILENCE_ENERGY:g}"
        )
    silent_est = np.flatnonzero(np.einsum("it,it->i", est, est) <= SILENCE_ENERGY)
    if silent_est.size:
        raise UndefinedMetricError(
            f"SDR/SIR/SAR are undefined for a silent {what}: {what}(s) {silent_est.tolist()} "
            f"have energy <= {SILENCE_ENERGY:g} (the BSS-eval projection is underdetermined)"
        )


def _finite_or_raise(values, what):
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).any():
        raise UndefinedMetricError(
            f"{what} evaluated to NaN (ill-conditioned BSS-eval system, e.g. silent or "
            "degenerate signals)"
        )
    return values


def _coherence_to_db(coh):
    """``10 log10(c / (1 - c))``: the SDR-type ratio from a squared cosine ``c`` in [0, 1]."""
    coh = np.clip(coh, 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(coh / (1.0 - coh))


def _mir_eval_bss(references, estimates, compute_permutation=True):
    """``mir_eval.separation.bss_eval_sources`` with its 0.8 deprecation warning silenced."""
    import mir_eval.separation

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return mir_eval.separation.bss_eval_sources(
            references, estimates, compute_permutation=compute_permutation
        )


def _bss_eval(est, ref, backend):
    _check_bss_inputs(est, ref)
    if backend == "fast":
        from fast_bss_eval.numpy import bss_eval_sources

        # ref first (bss_eval convention). Its permutation solves the same problem as mir_eval
        # (maximum mean SIR over the [n_ref, n_est] matrix, rows = references) and returns, for
        # each reference, the column = estimate index: the same meaning as mir_eval's popt.
        with np.errstate(divide="ignore"):  # a perfect estimate gives +inf dB
            sdr, sir, sar, perm = bss_eval_sources(
                ref, est, filter_length=BSS_FILTER_LENGTH, compute_permutation=True
            )
    else:
        sdr, sir, sar, perm = _mir_eval_bss(ref, est)
    return {
        "sdr": _finite_or_raise(sdr, "SDR").tolist(),
        "sir": _finite_or_raise(sir, "SIR").tolist(),
        "sar": _finite_or_raise(sar, "SAR").tolist(),
        "perm": [int(p) for p in perm],
    }


def bss_eval(estimates, references, backend="fast"):
    """BSS-eval v3 ``bss_eval_sources``: SDR, SIR and SAR with the SIR-maximising permutation.

    Every estimate is decomposed on the subspace spanned by *all* reference sources and their
    delays (512-tap filters); only the arrays passed as ``estimates`` are ever evaluated.

    Parameters
    ----------
    estimates, references : array-like, shape [n_src, T]
    backend : {"fast", "mir_eval"}
        ``"fast"``: ``fast_bss_eval.numpy.bss_eval_sources(references, estimates,
        filter_length=512)`` (its torch backend does not run on recent torch);
        ``"mir_eval"``: ``mir_eval.separation.bss_eval_sources(references, estimates)``
        (deprecated in mir_eval 0.8; the warning is silenced here).

    Returns
    -------
    dict
        ``"sdr"``, ``"sir"``, ``"sar"``: lists of floats in dB, one per reference, each for the
        estimate ``perm[i]``; ``"perm"``: list, ``perm[i]`` = estimate assigned to reference
        ``i``, maximising the mean SIR (mir_eval's ``popt``). A perfect estimate can give
        ``+inf``.

    Raises
    ------
    UndefinedMetricError
        Silent reference or estimate, signals shorter than 512 samples, or a NaN result.
    ValueError
        On shape mismatch / wrong number of sources / unknown backend.
    """
    _check_backend(backend)
    est, ref = _check_sources(estimates, references)
    return _bss_eval(est, ref, backend)


def _bss_eval_with_mixture(est, ref, mix, backend):
    """BSS-eval of the estimates and of the mixture copies, sharing what can be shared.

    Returns ``(bss, mixture_sdr, mixture_error)``: ``bss`` as :func:`bss_eval` returns it,
    ``mixture_sdr`` the SDR (list, per reference) of the mixture used as the estimate of every
    source, or ``None`` with the reason in ``mixture_error``.

    With the ``"fast"`` backend, the squared cosines of every reference with the ``n_src``
    estimates and the mixture come from one ``fast_bss_eval.numpy.square_cosine_metrics`` call
    (the reference statistics and Gram matrix are built once for all of them) and are converted
    to dB as ``fast_bss_eval.bss_eval_sources`` does; the estimates' permutation maximises the
    mean SIR. This gives the same numbers as ``bss_eval`` on the estimates and on the mixture
    copies, with either backend (tested to 1e-6 dB against separate calls, 1e-9 dB against
    mir_eval on speech items).
    """
    _check_bss_inputs(est, ref)
    try:
        _check_bss_inputs(mix[None], ref, what="mixture")
        mixture_error = None
    except UndefinedMetricError as err:
        mixture_error = str(err)
    n_src = est.shape[0]

    if backend == "mir_eval":
        bss = _bss_eval(est, ref, backend)
        mixture_sdr = None
        if mixture_error is None:
            # All estimates are the same signal, so every permutation gives the same values;
            # compute_permutation=False evaluates copy i against reference i only.
            mix_sdr = _mir_eval_bss(ref, np.tile(mix, (n_src, 1)), compute_permutation=False)[0]
            mixture_sdr = _finite_or_raise(mix_sdr, "mixture SDR").tolist()
        return bss, mixture_sdr, mixture_error

    from fast_bss_eval.numpy import square_cosine_metrics

    candidates = est if mixture_error is not None else np.concatenate([est, mix[None]], axis=0)
    # pairwise: coh_sdr [n_ref, n_cand] (reference r, candidate j), coh_sar broadcast to it
    coh_sdr, coh_sar = square_cosine_metrics(ref, candidates, filter_length=BSS_FILTER_LENGTH)
    with np.errstate(divide="ignore", invalid="ignore"):
        coh_sir = coh_sdr / coh_sar
    sdr_mat = _finite_or_raise(_coherence_to_db(coh_sdr), "SDR")
    sir_mat = _finite_or_raise(_coherence_to_db(coh_sir), "SIR")
    sar_mat = _finite_or_raise(_coherence_to_db(coh_sar), "SAR")
    perm = _best_permutation(sir_mat[:, :n_src])
    rows = np.arange(n_src)
    bss = {
        "sdr": sdr_mat[rows, perm].tolist(),
        "sir": sir_mat[rows, perm].tolist(),
        "sar": sar_mat[rows, perm].tolist(),
        "perm": perm.tolist(),
    }
    mixture_sdr = None if mixture_error is not None else sdr_mat[:, n_src].tolist()
    return bss, mixture_sdr, mixture_error


def sdr_improvement(estimates, references, mixture, backend="fast"):
    """BSS-eval SDR and SDR improvement over the mixture.

    ``SDRi_i = SDR(estimates[perm[i]], references[i]) - SDR_mix_i`` where ``perm`` is the
    :func:`bss_eval` permutation (maximum mean SIR) and ``SDR_mix_i`` is the SDR of reference
    ``i`` obtained by ``bss_eval_sources(references, M)`` with ``M = [mixture] * n_src`` (the
    mixture copied ``n_src`` times, i.e. the mixture used as the estimate of every source).
    As all rows of ``M`` are equal, its permutation is irrelevant: ``SDR_mix_i`` is the SDR of
    the mixture decomposed on all references with reference ``i`` as the target.

    Parameters
    ----------
    estimates, references : array-like, shape [n_src, T]
    mixture : array-like, shape [T]
    backend : {"fast", "mir_eval"}
        See :func:`bss_eval`. With ``"fast"`` the estimates and the mixture are evaluated in one
        ``square_cosine_metrics`` call (same numbers as two calls, reference statistics computed
        once).

    Returns
    -------
    dict
        ``"sdr"``, ``"sdri"``: means over sources; ``"per_source_sdr"``, ``"per_source_sdri"``,
        ``"mixture_sdr"``: per reference (lists); ``"sir"``, ``"sar"``: per-source lists;
        ``"perm"``: the BSS-eval permutation.

    Raises
    ------
    UndefinedMetricError
        If the SDR of the estimates or of the mixture is undefined (silent signals, ...).
    """
    _check_backend(backend)
    est, ref, mix = _check_sources(estimates, references, mixture)
    bss, mixture_sdr, mixture_error = _bss_eval_with_mixture(est, ref, mix, backend)
    if mixture_sdr is None:
        raise UndefinedMetricError(f"SDRi is undefined: {mixture_error}")
    sdr = np.asarray(bss["sdr"])
    sdri = sdr - np.asarray(mixture_sdr)
    return {
        "sdr": float(sdr.mean()),
        "sdri": float(sdri.mean()),
        "per_source_sdr": sdr.tolist(),
        "per_source_sdri": sdri.tolist(),
        "mixture_sdr": list(mixture_sdr),
        "sir": bss["sir"],
        "sar": bss["sar"],
        "perm": bss["perm"],
    }


# --------------------------------------------------------------------------------------------
# PESQ / STOI
# --------------------------------------------------------------------------------------------


def _pesq_setup(sample_rate, mode):
    """``(pesq_rate, mode, resample_factors or None)`` for signals at ``sample_rate``."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if mode is not None and mode not in ("nb", "wb"):
        raise ValueError(f"mode must be 'nb', 'wb' or None, got {mode!r}")
    if sample_rate == 8000:
        if mode == "wb":
            raise ValueError("wide-band PESQ needs 16 kHz audio; use mode='nb' at 8 kHz")
        return 8000, "nb", None
    if sample_rate == 16000:
        return 16000, mode or "wb", None
    g = gcd(int(sample_rate), 16000)
    return 16000, mode or "wb", (16000 // g, int(sample_rate) // g)


def _resample(x, factors):
    if factors is None:
        return x
    from scipy.signal import resample_poly

    return resample_poly(x, factors[0], factors[1], axis=-1)


def _pesq_raw(estimate, reference, pesq_rate, mode):
    """One PESQ call on signals already at ``pesq_rate``; failures become UndefinedMetricError."""
    from pesq import PesqError, pesq

    if not np.any(reference):
        raise UndefinedMetricError("PESQ is undefined for a silent reference")
    try:
        return float(pesq(pesq_rate, reference, estimate, mode))
    except PesqError as err:  # NoUtterancesError, BufferTooShortError, ...
        msg = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else str(err)
        raise UndefinedMetricError(f"PESQ failed ({type(err).__name__}): {msg}") from err
    except ValueError as err:  # e.g. NaN inside the C code for a silent estimate
        raise UndefinedMetricError(f"PESQ failed ({err}); is the estimate silent?") from err


def pesq_score(estimate, reference, sample_rate, mode=None):
    """Perceptual evaluation of speech quality (ITU-T P.862 / P.862.2) via the ``pesq`` package.

    Parameters
    ----------
    estimate, reference : array-like, shape [T]
    sample_rate : int
        Sample rate of both signals. At 8 kHz narrow-band PESQ ('nb', P.862 MOS-LQO) is
        computed, at 16 kHz wide-band ('wb', P.862.2). At any other rate both signals are first
        resampled to 16 kHz with ``scipy.signal.resample_poly`` (polyphase, Kaiser window) and
        wide-band PESQ is computed.
    mode : {None, "nb", "wb"}
        Overrides the mode where ``pesq`` allows it (``"nb"`` is also possible at 16 kHz).

    Returns
    -------
    float
        MOS-LQO score (about -0.5..4.5 for nb, 1..4.64 for wb).

    Raises
    ------
    UndefinedMetricError
        When ``pesq`` raises (e.g. ``NoUtterancesError`` for silence, ``BufferTooShortError``
        for less than 1/4 s) or the reference is silent; the message says why.
    """
    est, ref = _check_signal_pair(estimate, reference)
    pesq_rate, mode, factors = _pesq_setup(sample_rate, mode)
    return _pesq_raw(_resample(est, factors), _resample(ref, factors), pesq_rate, mode)


def stoi_score(estimate, reference, sample_rate, extended=False):
    """Short-time objective intelligibility (Taal et al., 2011) or ESTOI, via ``pystoi.stoi``.

    ``pystoi`` resamples internally to 10 kHz and removes silent frames (40 dB below the
    loudest frame of the reference).

    Parameters
    ----------
    estimate, reference : array-like, shape [T]
    sample_rate : int
    extended : bool
        Extended STOI (Jensen & Taal, 2016).

    Returns
    -------
    float
        STOI in [0, 1] (ESTOI can be slightly negative).

    Raises
    ------
    UndefinedMetricError
        When fewer than 30 speech frames remain after silent-frame removal (``pystoi`` would
        warn and return a placeholder ``1e-5``) or the reference is silent.
    """
    est, ref = _check_signal_pair(estimate, reference)
    return _stoi_raw(est, ref, sample_rate, extended)


def _stoi_raw(est, ref, sample_rate, extended):
    from pystoi import stoi

    if not np.any(ref):
        raise UndefinedMetricError("STOI is undefined for a silent reference")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(stoi(ref, est, sample_rate, extended=extended))
    for w in caught:
        if "Not enough STFT frames" in str(w.message):
            raise UndefinedMetricError(f"STOI is undefined: {w.message}")
    if math.isnan(value):
        raise UndefinedMetricError("STOI evaluated to NaN")
    return value


# --------------------------------------------------------------------------------------------
# one item, many items, summaries
# --------------------------------------------------------------------------------------------


def _fail(row, errors, keys, reason):
    for key in keys:
        row[key] = None
        if key not in row["failed"]:
            row["failed"].append(key)
    errors[keys[0]] = reason
    logger.debug("metric(s) %s undefined: %s", keys, reason)


def evaluate_separation(
    estimates,
    references,
    mixture,
    sample_rate,
    metrics=("si_sdr", "sdr", "pesq", "stoi"),
    backend="fast",
    eps=1e-8,
):
    """All metrics for one separated item: one row of a results table.

    Parameters
    ----------
    estimates, references : array-like, shape [n_src, T]
    mixture : array-like, shape [T]
    sample_rate : int
        Sample rate of all signals (PESQ: nb at 8 kHz, wb at 16 kHz, resampled to 16 kHz wb
        otherwise; see :func:`pesq_score`).
    metrics : iterable of str
        Subset of ``("si_sdr", "sdr", "pesq", "stoi")``. ``"si_sdr"`` gives ``si_sdr`` and
        ``si_sdri``; ``"sdr"`` gives ``sdr``, ``sdri``, ``sir`` and ``sar`` (BSS-eval v3, one
        pass for estimates and mixture).
    backend : {"fast", "mir_eval"}
        BSS-eval backend, see :func:`bss_eval`.
    eps : float
        SI-SDR guard, see :func:`si_sdr`.

    Returns
    -------
    dict
        Means over sources under ``"si_sdr"``, ``"si_sdri"``, ``"sdr"``, ``"sdri"``, ``"sir"``,
        ``"sar"``, ``"pesq"``, ``"stoi"`` (those requested), and per-source values with suffixes
        ``_s1``, ``_s2``, ... (``_sK`` = reference source ``K``, e.g. ``"si_sdr_s1"``).
        ``"perm"`` is the SI-SDR permutation (``perm[i]`` = estimate assigned to reference
        ``i``; the speaker labels follow it) and is always computed; SI-SDR, SI-SDRi, PESQ and
        STOI pair estimates and references with it. BSS-eval metrics use their own
        SIR-maximising permutation, stored as ``"bss_perm"`` (they normally agree). A metric
        that is undefined for this item is ``None``; ``"failed"`` lists every key that is
        ``None`` because of a failure (the metric, e.g. ``"pesq"``, and the per-source keys
        concerned, e.g. ``"pesq_s2"``) and ``"errors"[metric]`` says why; a mean is ``None`` as
        soon as one source's value is. Values are never replaced by zero or NaN.

    Raises
    ------
    ValueError
        On invalid input (shapes, number of sources, unknown metric / backend). Undefined
        metrics do not raise.
    """
    metrics = tuple(metrics)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {METRICS}")
    _check_backend(backend)
    est, ref, mix = _check_sources(estimates, references, mixture)
    n_src = est.shape[0]
    suffixes = [f"_s{i + 1}" for i in range(n_src)]
    row = {"perm": None, "failed": []}
    errors = {}
    perm_error = None

    # SI-SDR / SI-SDRi; the permutation is needed by PESQ / STOI (and the speaker labels)
    try:
        res = _si_sdr_improvement(est, ref, mix, eps)
        row["perm"] = res["perm"]
    except UndefinedMetricError as err:
        res, perm_error = None, str(err)
    if "si_sdr" in metrics:
        if res is None:
            keys = ["si_sdr", "si_sdri"]
            keys += [k + s for k in keys for s in suffixes]
            _fail(row, errors, keys, perm_error)
            errors["si_sdri"] = perm_error
        else:
            row["si_sdr"], row["si_sdri"] = res["si_sdr"], res["si_sdri"]
            for s, v, vi in zip(
                suffixes, res["per_source"], res["per_source_si_sdri"], strict=True
            ):
                row["si_sdr" + s], row["si_sdri" + s] = v, vi

    if "sdr" in metrics:
        row["bss_perm"] = None
        names = ["sdr", "sdri", "sir", "sar"]
        try:
            bss, mixture_sdr, mixture_error = _bss_eval_with_mixture(est, ref, mix, backend)
        except UndefinedMetricError as err:
            _fail(row, errors, names + [k + s for k in names for s in suffixes], str(err))
            for name in names[1:]:
                errors[name] = str(err)
        else:
            row["bss_perm"] = bss["perm"]
            for name in ("sdr", "sir", "sar"):
                row[name] = float(np.mean(bss[name]))
                for s, v in zip(suffixes, bss[name], strict=True):
                    row[name + s] = v
            if mixture_sdr is None:
                _fail(row, errors, ["sdri"] + ["sdri" + s for s in suffixes], mixture_error)
            else:
                sdri = np.asarray(bss["sdr"]) - np.asarray(mixture_sdr)
                row["sdri"] = float(sdri.mean())
                for s, v in zip(suffixes, sdri.tolist(), strict=True):
                    row["sdri" + s] = v

    for name in ("pesq", "stoi"):
        if name not in metrics:
            continue
        if row["perm"] is None:
            _fail(
                row,
                errors,
                [name] + [name + s for s in suffixes],
                f"no source assignment (SI-SDR permutation undefined: {perm_error})",
            )
            continue
        if name == "pesq":
            pesq_rate, mode, factors = _pesq_setup(sample_rate, None)
            est_p, ref_p = _resample(est, factors), _resample(ref, factors)  # once per item

            def score(i, j, est_p=est_p, ref_p=ref_p, pesq_rate=pesq_rate, mode=mode):
                return _pesq_raw(est_p[j], ref_p[i], pesq_rate, mode)

        else:

            def score(i, j):
                return _stoi_raw(est[j], ref[i], sample_rate, False)

        values, reasons = [], []
        for i, (s, j) in enumerate(zip(suffixes, row["perm"], strict=True)):
            try:
                value = score(i, j)
            except UndefinedMetricError as err:
                value = None
                reasons.append(f"source {i + 1}: {err}")
                row["failed"].append(name + s)
            row[name + s] = value
            values.append(value)
        if reasons:
            _fail(row, errors, [name], "; ".join(reasons))
        else:
            row[name] = float(np.mean(values))

    row["errors"] = errors
    return row


def blas_threads_limited(n_threads):
    """Context manager limiting the BLAS thread pools of this process, restored on exit.

    Several processes with multi-threaded BLAS oversubscribe the cores, and OpenBLAS's spinning
    threads can then make the linear solves of BSS-eval many times slower; each worker of a
    process pool should run single-threaded BLAS. This is
    ``threadpoolctl.threadpool_limits(limits=n_threads, user_api="blas")``: every BLAS library
    loaded in the process (numpy's and scipy's OpenBLAS, MKL, ...) is limited.

    Parameters
    ----------
    n_threads : int
        Number of BLAS threads inside the block.
    """
    return threadpool_limits(limits=n_threads, user_api="blas")


def _init_worker(blas_threads):
    """Process-pool initializer: ``blas_threads`` BLAS threads for the worker's whole life."""
    if blas_threads is not None:
        threadpool_limits(limits=blas_threads, user_api="blas")


_BLAS_ENV_KEYS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _metric_pool(n_workers, blas_threads=1, mp_context="fork"):
    """A ``ProcessPoolExecutor`` whose workers run with ``blas_threads`` BLAS threads.

    The limit is set by the pool initializer (:func:`_init_worker`); with a start method other
    than ``"fork"`` it is also exported through the BLAS environment variables while the workers
    start (so the libraries never create more threads), restored on exit.
    """
    import multiprocessing

    saved = {k: os.environ.get(k) for k in _BLAS_ENV_KEYS}
    if blas_threads is not None and mp_context != "fork":
        os.environ.update({k: str(blas_threads) for k in _BLAS_ENV_KEYS})
    try:
        with ProcessPoolExecutor(
            max_workers=n_workers,
            mp_context=multiprocessing.get_context(mp_context),
            initializer=_init_worker,
            initargs=(blas_threads,),
        ) as pool:
            yield pool
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _evaluate_item(args):
    item, kwargs = args
    if isinstance(item, dict):
        est, ref, mix = item["estimates"], item["references"], item["mixture"]
    else:
        est, ref, mix = item
    return evaluate_separation(est, ref, mix, **kwargs)


def evaluate_many(
    items,
    sample_rate,
    n_jobs=2,
    metrics=("si_sdr", "sdr", "pesq", "stoi"),
    backend="fast",
    eps=1e-8,
    blas_threads=1,
    mp_context="fork",
    chunksize=1,
):
    """:func:`evaluate_separation` over many items, in a pool of ``n_jobs`` processes.

    Parameters
    ----------
    items : iterable
        Each item is ``(estimates, references, mixture)`` or a dict with those keys.
    sample_rate : int
    n_jobs : int or None
        Number of worker processes (``None``: ``os.cpu_count()``); ``1`` runs in this process.
    metrics, backend, eps
        See :func:`evaluate_separation`.
    blas_threads : int or None
        BLAS threads per worker (default 1, so that ``n_jobs`` workers do not oversubscribe the
        cores); ``None`` leaves the BLAS configuration alone.
    mp_context : str
        ``multiprocessing`` start method. ``"fork"`` (default, POSIX only) starts workers
        instantly; use ``"spawn"`` if the calling process runs threads that are not fork-safe
        (e.g. an active CUDA context); the BLAS limit is then also exported through the
        ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` environment
        variables while the workers start.
    chunksize : int
        Items sent to a worker at a time.

    Returns
    -------
    list of dict
        One row per item, in input order.
    """
    kwargs = {"sample_rate": sample_rate, "metrics": tuple(metrics), "backend": backend, "eps": eps}
    if n_jobs is None:
        n_jobs = os.cpu_count() or 1
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    jobs = [(item, kwargs) for item in items]
    if n_jobs == 1 or len(jobs) <= 1:
        return [_evaluate_item(job) for job in jobs]

    with _metric_pool(min(n_jobs, len(jobs)), blas_threads, mp_context) as pool:
        return list(pool.map(_evaluate_item, jobs, chunksize=chunksize))


def summarize(rows, keys):
    """Aggregates metric values over rows, ignoring missing (``None``) values.

    Parameters
    ----------
    rows : sequence of dict
        Rows as returned by :func:`evaluate_separation`.
    keys : iterable of str
        Metric names to aggregate (e.g. ``("si_sdr", "si_sdri", "pesq")``).

    Returns
    -------
    dict
        ``{key: {"mean", "median", "std", "n", "n_missing"}}`` where ``n`` counts the values
        present, ``n_missing`` the ``None`` values, and mean / median / (population, ddof=0)
        standard deviation are over the present values only (``None`` when ``n == 0``).

    Raises
    ------
    ValueError
        If a row lacks a key, or holds a NaN (failures must be recorded as ``None``).
    """
    out = {}
    for key in keys:
        values, n_missing = [], 0
        for idx, row in enumerate(rows):
            if key not in row:
                raise ValueError(f"row {idx} has no {key!r} (available: {sorted(row)})")
            value = row[key]
            if value is None:
                n_missing += 1
                continue
            value = float(value)
            if math.isnan(value):
                raise ValueError(f"row {idx} has NaN for {key!r}; record failures as None")
            values.append(value)
        arr = np.asarray(values, dtype=np.float64)
        n = int(arr.size)
        out[key] = {
            "mean": float(arr.mean()) if n else None,
            "median": float(np.median(arr)) if n else None,
            # an infinite value (e.g. the SAR of an exact mixture) makes the std infinite, not NaN
            "std": (float(arr.std()) if np.isfinite(arr).all() else math.inf) if n else None,
            "n": n,
            "n_missing": n_missing,
        }
    return out

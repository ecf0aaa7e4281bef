"""BSS-eval v3 ``bss_eval_sources`` (Vincent, Gribonval, Fevotte, IEEE TASLP 2006): SDR, SIR and
SAR with 512-tap time-invariant distortion filters, permutation maximising the mean SIR (as
``mir_eval.separation.bss_eval_sources`` and the BSS_EVAL Matlab toolbox choose it):
:func:`bss_eval` and :func:`sdr_improvement`.

Two backends give the same numbers (about 1e-12 dB apart on realistic speech items, see
``tests/benchmarks/bench_separation_metrics.py``): ``"fast"`` (``fast_bss_eval.numpy``: the same
least-squares problems solved from FFT correlation statistics) and ``"mir_eval"`` (the reference
implementation, which re-builds and solves the Gram system of the delayed references for every
estimate/reference pair). With ``"fast"``, :func:`bss_eval_with_mixture` (behind
:func:`sdr_improvement` and the rows of :mod:`sepid.separation.metrics.rows`) scores the
estimates and the mixture in one ``fast_bss_eval.numpy.square_cosine_metrics`` call (reference
statistics and Gram matrix built once).
"""

import warnings

import numpy as np

from sepid.separation.metrics.inputs import UndefinedMetricError, check_sources
from sepid.separation.metrics.permutation import best_permutation

__all__ = [
    "BACKENDS",
    "bss_eval",
    "bss_eval_with_mixture",
    "check_backend",
    "sdr_improvement",
]

#: Length of the BSS-eval v3 distortion filters (``bss_eval_sources``).
BSS_FILTER_LENGTH = 512
#: Energy (sum of squares) at or below which a signal counts as silent for BSS-eval.
SILENCE_ENERGY = 1e-8
#: The BSS-eval backends.
BACKENDS = ("fast", "mir_eval")


def check_backend(backend):
    """Raises ``ValueError`` unless ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


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
    check_backend(backend)
    est, ref = check_sources(estimates, references)
    return _bss_eval(est, ref, backend)


def bss_eval_with_mixture(est, ref, mix, backend):
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
    perm = best_permutation(sir_mat[:, :n_src])
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
    check_backend(backend)
    est, ref, mix = check_sources(estimates, references, mixture)
    bss, mixture_sdr, mixture_error = bss_eval_with_mixture(est, ref, mix, backend)
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

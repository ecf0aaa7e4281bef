"""SI-SDR (Le Roux, Wisdom, Erdogan, Hershey, "SDR - half-baked or well done?", ICASSP 2019):
:func:`si_sdr` of one signal pair, :func:`pit_si_sdr` (the permutation maximising the mean SI-SDR)
and :func:`si_sdr_improvement` (SI-SDRi with respect to the mixture), in float64."""

import numpy as np

from sepid.separation.metrics.inputs import (
    UndefinedMetricError,
    check_signal_pair,
    check_sources,
)
from sepid.separation.metrics.permutation import best_permutation

__all__ = ["pit_si_sdr", "si_sdr", "si_sdr_improvement"]


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
    est, ref = check_signal_pair(estimate, reference)
    return float(_pairwise_si_sdr(est[None], ref[None], eps)[0, 0])


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
    est, ref = check_sources(estimates, references)
    matrix = _pairwise_si_sdr(est, ref, eps)
    perm = best_permutation(matrix)
    return matrix[np.arange(len(perm)), perm], perm


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
    est, ref, mix = check_sources(estimates, references, mixture)
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

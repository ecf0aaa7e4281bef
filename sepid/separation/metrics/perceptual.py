"""Perceptual scores of one separated signal against its reference: PESQ (ITU-T P.862 /
P.862.2, ``pesq`` package) in :func:`pesq_score` and STOI / ESTOI (``pystoi``) in
:func:`stoi_score`. ``pesq_setup``, ``resample_for_pesq``, ``pesq_raw`` and ``stoi_raw`` are the
same computations on signals already checked, for the rows of
:mod:`sepid.separation.metrics.rows` (which resample each item once for all its sources)."""

import math
import warnings
from math import gcd

import numpy as np

from sepid.separation.metrics.inputs import UndefinedMetricError, check_signal_pair

__all__ = ["pesq_raw", "pesq_score", "pesq_setup", "resample_for_pesq", "stoi_raw", "stoi_score"]


def pesq_setup(sample_rate, mode):
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


def resample_for_pesq(x, factors):
    if factors is None:
        return x
    from scipy.signal import resample_poly

    return resample_poly(x, factors[0], factors[1], axis=-1)


def pesq_raw(estimate, reference, pesq_rate, mode):
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
    est, ref = check_signal_pair(estimate, reference)
    pesq_rate, mode, factors = pesq_setup(sample_rate, mode)
    return pesq_raw(
        resample_for_pesq(est, factors), resample_for_pesq(ref, factors), pesq_rate, mode
    )


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
    est, ref = check_signal_pair(estimate, reference)
    return stoi_raw(est, ref, sample_rate, extended)


def stoi_raw(est, ref, sample_rate, extended):
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

"""What every separation metric accepts and refuses: conversion to float64, the shape checks of
one signal pair ``[T]`` or of stacked sources ``[n_src, T]`` (+ a mixture ``[T]``), and
:class:`UndefinedMetricError` for an item where a metric is undefined."""

import numpy as np

__all__ = ["UndefinedMetricError", "as_float64", "check_signal_pair", "check_sources"]


class UndefinedMetricError(ValueError):
    """A metric is mathematically undefined (or its reference implementation refuses) for an item.

    Raised for example for a silent reference (SI-SDR, SDR), a silent estimate (SDR: the
    BSS-eval projection is underdetermined) or when PESQ detects no utterance. Callers that
    evaluate many items record the value as missing instead of inventing one.
    """


def as_float64(x, name):
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


def _as_float64_pair(estimate, reference, names, ndim, layout):
    """Both signals as float64 arrays of ``ndim`` dimensions (``layout`` names them)."""
    est = as_float64(estimate, names[0])
    ref = as_float64(reference, names[1])
    if est.ndim != ndim or ref.ndim != ndim:
        raise ValueError(
            f"{names[0]} and {names[1]} must be {layout}, got shapes {est.shape} and {ref.shape}"
        )
    return est, ref


def check_signal_pair(estimate, reference):
    """Validates one ``[T]`` estimate and its ``[T]`` reference; returns them as float64."""
    est, ref = _as_float64_pair(
        estimate, reference, ("estimate", "reference"), 1, "1-D signals [T]"
    )
    if est.shape != ref.shape:
        raise ValueError(
            f"estimate and reference must have the same length, got {est.shape[0]} and "
            f"{ref.shape[0]} samples"
        )
    if est.shape[0] == 0:
        raise ValueError("estimate and reference are empty")
    return est, ref


def check_sources(estimates, references, mixture=None):
    """Validates ``[n_src, T]`` estimates / references and an optional ``[T]`` mixture; returns
    them as float64 (``(est, ref)`` or ``(est, ref, mix)``)."""
    est, ref = _as_float64_pair(
        estimates, references, ("estimates", "references"), 2, "2-D arrays [n_src, T]"
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
    mix = as_float64(mixture, "mixture")
    if mix.ndim != 1:
        raise ValueError(f"mixture must be a 1-D signal [T], got shape {mix.shape}")
    if mix.shape[0] != ref.shape[1]:
        raise ValueError(f"mixture has {mix.shape[0]} samples but the sources have {ref.shape[1]}")
    return est, ref, mix

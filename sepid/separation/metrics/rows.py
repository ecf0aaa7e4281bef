"""Every requested metric for one separated item as one row of a results table
(:func:`evaluate_separation`: each metric computed once, undefined ones recorded as ``None`` with
the reason), and the summary of a metric over rows (:func:`summarize`)."""

import logging
import math

import numpy as np

from sepid.separation.metrics.bss import bss_eval_with_mixture, check_backend
from sepid.separation.metrics.inputs import UndefinedMetricError, check_sources
from sepid.separation.metrics.perceptual import (
    pesq_raw,
    pesq_setup,
    resample_for_pesq,
    stoi_raw,
)
from sepid.separation.metrics.sisdr import si_sdr_improvement

logger = logging.getLogger(__name__)

__all__ = ["METRICS", "evaluate_separation", "summarize"]

#: Metric groups accepted by :func:`evaluate_separation`.
METRICS = ("si_sdr", "sdr", "pesq", "stoi")


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
    check_backend(backend)
    est, ref, mix = check_sources(estimates, references, mixture)
    n_src = est.shape[0]
    suffixes = [f"_s{i + 1}" for i in range(n_src)]
    row = {"perm": None, "failed": []}
    errors = {}
    perm_error = None

    # SI-SDR / SI-SDRi; the permutation is needed by PESQ / STOI (and the speaker labels)
    try:
        res = si_sdr_improvement(est, ref, mix, eps)
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
            bss, mixture_sdr, mixture_error = bss_eval_with_mixture(est, ref, mix, backend)
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
            pesq_rate, mode, factors = pesq_setup(sample_rate, None)
            est_p, ref_p = (
                resample_for_pesq(est, factors),
                resample_for_pesq(ref, factors),
            )  # once per item

            def score(i, j, est_p=est_p, ref_p=ref_p, pesq_rate=pesq_rate, mode=mode):
                return pesq_raw(est_p[j], ref_p[i], pesq_rate, mode)

        else:

            def score(i, j):
                return stoi_raw(est[j], ref[i], sample_rate, False)

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

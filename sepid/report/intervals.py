"""Bootstrap confidence intervals for the results tables, and what a comparison may claim.

Every interval here is Efron's percentile interval: the ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` quantiles (numpy's linear interpolation) of the statistic over
``samples`` resamples drawn with ``numpy.random.default_rng(seed)``; the same seed gives the same
resamples, so two systems measured on the same items get the same resamples and their paired
difference is the difference of their resampled values (a paired bootstrap).

Per-item means (separation metrics over mixtures, :func:`mean_interval`,
:func:`paired_mean_interval`) resample the items with replacement: each resample's item counts
``c`` are one multinomial draw of ``n`` items, its mean ``sum(c * x) / n``. Verification metrics
are resampled by speaker (:mod:`sepid.speaker.bootstrap`).

An interval is written as ``{"low", "high", "confidence", "samples", "seed", "unit",
"n_units"}`` (``unit``: what was resampled), next to the point estimate it belongs to.
"""

import numpy as np

DEFAULT_SAMPLES = 1000
DEFAULT_SEED = 1986
DEFAULT_CONFIDENCE = 0.95


def check_bootstrap_options(samples, seed, confidence):
    """Validates the YAML's ``bootstrap_samples`` (0: no intervals), ``bootstrap_seed`` and
    ``bootstrap_confidence``."""
    if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 0:
        raise ValueError(
            f"bootstrap_samples={samples!r}: give a whole number of resamples (e.g. 1000), or 0 "
            "for no confidence intervals."
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"bootstrap_seed={seed!r}: give an integer seed.")
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_confidence={confidence!r}: give a level in (0, 1), e.g. 0.95.")


def percentile_interval(values, confidence=DEFAULT_CONFIDENCE):
    """``(low, high)`` percentile interval of resampled ``values`` (``[samples]`` or ``[samples,
    k]``: one interval per column); NaN rows (resamples where the statistic is undefined) are
    left out."""
    values = np.asarray(values, dtype=np.float64)
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail], axis=0)
    return low, high


def interval_record(low, high, *, confidence, samples, seed, unit, n_units, **extra):
    """The JSON form of one interval (see the module docstring)."""
    return {
        "low": float(low),
        "high": float(high),
        "confidence": confidence,
        "samples": int(samples),
        "seed": int(seed),
        "unit": unit,
        "n_units": int(n_units),
        **extra,
    }


def _present(values):
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def resampled_means(values, samples, seed):
    """Means of ``values`` (``[n]``, no missing) over ``samples`` resamples of the items."""
    n = len(values)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=samples)
    return counts @ np.asarray(values, dtype=np.float64) / n


def mean_interval(values, samples=DEFAULT_SAMPLES, seed=DEFAULT_SEED, confidence=0.95):
    """Percentile bootstrap interval of the mean of per-item ``values`` (``None`` entries, items
    where the metric is undefined, are left out first, as the mean leaves them out); None when
    fewer than two values are present, one is infinite, or ``samples`` is 0."""
    x = _present(values)
    x = x[~np.isnan(x)]
    if samples == 0 or x.size < 2 or not np.isfinite(x).all():  # an infinite mean (a SAR)
        return None
    low, high = percentile_interval(resampled_means(x, samples, seed), confidence)
    return interval_record(
        low,
        high,
        confidence=confidence,
        samples=samples,
        seed=seed,
        unit="item",
        n_units=x.size,
    )


def paired_mean_interval(a, b, samples=DEFAULT_SAMPLES, seed=DEFAULT_SEED, confidence=0.95):
    """Mean of ``a - b`` over the items where both are defined (the same items, e.g. the same
    mixtures through two separators), with its paired bootstrap interval (the items
    resampled, each keeping its pair). Returns ``{"difference", "interval", "n"}`` (interval
    None when fewer than two pairs or ``samples`` is 0)."""
    a, b = _present(a), _present(b)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length: {a.shape[0]} and {b.shape[0]} items")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    interval = None
    if samples and d.size >= 2:
        low, high = percentile_interval(resampled_means(d, samples, seed), confidence)
        interval = interval_record(
            low,
            high,
            confidence=confidence,
            samples=samples,
            seed=seed,
            unit="item",
            n_units=d.size,
        )
    return {"difference": float(d.mean()) if d.size else None, "interval": interval, "n": d.size}


def verdict(interval, lower_is_better):
    """What the paired interval of ``system - other`` lets one say of ``system``: ``"beats"``
    when it excludes 0 on the better side, ``"is worse than"`` on the other side, ``"matches"``
    when it contains 0 (no difference the data can show), None without an interval."""
    if interval is None:
        return None
    low, high = interval["low"], interval["high"]
    if (high < 0) if lower_is_better else (low > 0):
        return "beats"
    if (low > 0) if lower_is_better else (high < 0):
        return "is worse than"
    return "matches"

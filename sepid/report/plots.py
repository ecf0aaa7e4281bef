"""PNG figures for recipe reports: DET curves and histograms.

Figures are drawn on a :class:`matplotlib.figure.Figure` attached to the non-interactive Agg
canvas, never through ``pyplot``: no global figure registry, nothing to close, no display
needed, and importing this module does not change the matplotlib backend of the caller.
"""

import logging
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import norm

from sepid.speaker.metrics import det_curve, eer

logger = logging.getLogger(__name__)

__all__ = ["plot_det", "plot_histogram"]

# DET axis ticks (fractions) and their labels in percent
DET_TICKS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
DET_TICK_LABELS = ("0.1", "0.5", "1", "2", "5", "10", "20", "40")
_DET_LIMITS = (0.0005, 0.5)


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120)
    fig.clear()
    logger.info("Wrote %s", path)
    return path


def plot_det(scores, labels, path, title=""):
    """Writes a DET curve (probit axes, in percent) with the EER point marked.

    Parameters
    ----------
    scores, labels : np.ndarray or torch.Tensor
        Trial scores and 0/1 labels, as for :func:`sepid.speaker.metrics.eer`.
    path : str or Path
        Output PNG (parent directories are created).
    title : str
        Figure title.

    Returns
    -------
    Path
        The written file.
    """
    far, frr, _ = det_curve(scores, labels)
    eer_value, _ = eer(scores, labels)
    lo, hi = _DET_LIMITS
    # rates of exactly 0 or 1 map to -/+inf: clip just outside the visible range
    clip = (lo / 10, 1 - lo / 10)
    x = norm.ppf(np.clip(far, *clip))
    y = norm.ppf(np.clip(frr, *clip))

    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, y, color="C0", linewidth=1.5, label="DET")
    limits = norm.ppf(np.array([lo, hi]))
    ax.plot(limits, limits, color="0.6", linestyle="--", linewidth=0.8)
    e = norm.ppf(np.clip(eer_value, *clip))
    ax.plot([e], [e], "o", color="C3", label=f"EER = {100 * eer_value:.2f}%")
    ticks = norm.ppf(np.array(DET_TICKS))
    ax.set_xticks(ticks)
    ax.set_xticklabels(DET_TICK_LABELS)
    ax.set_yticks(ticks)
    ax.set_yticklabels(DET_TICK_LABELS)
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_xlabel("False accept rate (%)")
    ax.set_ylabel("False reject rate (%)")
    ax.grid(True, linestyle=":", linewidth=0.6)
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_histogram(values, path, xlabel, title="", bins=50):
    """Writes a histogram of ``values`` (e.g. per-utterance SI-SDRi in dB).

    Parameters
    ----------
    values : array-like or torch.Tensor
        1-D values; NaN / infinite values are dropped with a warning.
    path : str or Path
        Output PNG (parent directories are created).
    xlabel : str
        Label of the x axis.
    title : str
        Figure title.
    bins : int
        Number of bins.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        If there is no finite value to plot.
    """
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(v)
    if not finite.all():
        logger.warning("plot_histogram: dropping %d non-finite value(s)", int((~finite).sum()))
        v = v[finite]
    if v.size == 0:
        raise ValueError("plot_histogram: no finite values to plot")

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(v, bins=bins, color="C0", edgecolor="white", linewidth=0.5)
    ax.axvline(float(np.mean(v)), color="C3", linestyle="--", label=f"mean = {np.mean(v):.2f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Count")
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)

"""Exact speaker-verification metrics in O(N log N).

All functions take ``scores`` (1-D numpy array or torch tensor; higher means more likely the same
speaker) and ``labels`` (1-D; 1 = target trial, 0 = non-target trial). The trials are sorted once
and every operating point is obtained from cumulative sums, so no thresholds x trials matrix is
ever built and a VoxCeleb1-H sized list (550k trials) takes well under a second.

Decision rule and threshold convention (the same as SpeechBrain's
``speechbrain.utils.metric_stats.EER`` / ``minDCF``): a trial is *accepted* when
``score > threshold``, so at threshold ``t``::

    FRR(t) = P(target score <= t)        (miss rate)
    FAR(t) = P(non-target score > t)     (false-alarm rate)

Operating points only change at distinct score values, so ties are handled exactly: all trials
with the same score are always on the same side of the threshold. The candidate thresholds are
the distinct score values (SpeechBrain also adds midpoints between consecutive distinct values;
these give the same operating point as the lower value and are reproduced only where it matters
for bit-exact agreement, see :func:`eer`).

All rates are fractions in ``[0, 1]``; recipes multiply by 100 for tables.
"""

import logging
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "SortedTrials",
    "det_curve",
    "eer",
    "min_dcf",
    "tar_at_far",
    "verification_metrics",
]


def _to_numpy(x, name):
    """Converts a torch tensor / array-like to a numpy array without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
        x = x.detach().cpu()
        if x.dtype.is_floating_point and str(x.dtype) not in ("torch.float32", "torch.float64"):
            x = x.float()  # float16 / bfloat16 have no (exact) numpy counterpart
        x = x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} cannot be converted to a numpy array: {err}") from err


def _validate(scores, labels):
    """Checks the inputs and returns ``(scores, labels)`` as numpy arrays.

    ``scores`` keeps a float32 / float64 dtype (so that thresholds are computed in the same
    precision as SpeechBrain would on the same tensor); other dtypes become float64. ``labels``
    becomes a bool array (True = target).
    """
    s = _to_numpy(scores, "scores")
    y = _to_numpy(labels, "labels")
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if s.shape[0] != y.shape[0]:
        raise ValueError(
            f"scores and labels must have the same length, got {s.shape[0]} scores and "
            f"{y.shape[0]} labels"
        )
    if s.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(s.dtype, np.number) or s.dtype == np.bool_):
            raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
        s = s.astype(np.float64)
    n_nan = int(np.isnan(s).sum())
    if n_nan:
        raise ValueError(f"scores contain {n_nan} NaN value(s)")
    if not np.isfinite(s).all():
        raise ValueError("scores contain infinite values")
    if y.dtype == np.bool_:
        y = y.copy()
    else:
        if not np.issubdtype(y.dtype, np.number):
            raise ValueError(f"labels must be numeric or boolean, got dtype {y.dtype}")
        bad = ~((y == 0) | (y == 1))
        if bad.any():
            examples = np.unique(y[bad])[:5].tolist()
            raise ValueError(f"labels must be 0 (non-target) or 1 (target), got {examples}")
        y = y == 1
    n_target = int(y.sum())
    n_nontarget = int(y.shape[0] - n_target)
    if n_target == 0:
        raise ValueError(f"no target trials (label 1) among {y.shape[0]} trials")
    if n_nontarget == 0:
        raise ValueError(f"no non-target trials (label 0) among {y.shape[0]} trials")
    return s, y


@dataclass
class _OperatingPoints:
    """Operating points at every distinct score value ``u[k]`` (threshold ``t = u[k]``).

    Attributes
    ----------
    u : np.ndarray
        Distinct score values, ascending, in the dtype of the scores.
    n_miss : np.ndarray
        Number of target trials with ``score <= u[k]`` (int64).
    n_fa : np.ndarray
        Number of non-target trials with ``score > u[k]`` (int64).
    n_target, n_nontarget : int
        Class counts.
    """

    u: np.ndarray
    n_miss: np.ndarray
    n_fa: np.ndarray
    n_target: int
    n_nontarget: int
    candidates: tuple = field(default=None, repr=False)  # speechbrain_candidates(), once
    _rates32: tuple = field(default=None, repr=False)

    @classmethod
    def from_scores(cls, scores, labels):
        s, y = _validate(scores, labels)
        order = np.argsort(s, kind="stable")
        s_sorted = s[order]
        y_sorted = y[order]
        del order
        n_target = int(y_sorted.sum())
        n_nontarget = int(y_sorted.shape[0] - n_target)
        # last position of every run of equal scores
        last = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))
        cum_target = np.cumsum(y_sorted, dtype=np.int64)
        n_miss = cum_target[last]  # targets with score <= u[k]
        n_nontarget_le = (last + 1) - n_miss  # non-targets with score <= u[k]
        return cls(
            u=s_sorted[last],
            n_miss=n_miss,
            n_fa=n_nontarget - n_nontarget_le,
            n_target=n_target,
            n_nontarget=n_nontarget,
        )

    def rates32(self):
        """``(frr, far)`` as float32, computed exactly as SpeechBrain does (count / n in float32);
        computed once per object (the EER and every minDCF read them)."""
        if self._rates32 is None:
            frr = self.n_miss.astype(np.float32) / np.float32(self.n_target)
            far = self.n_fa.astype(np.float32) / np.float32(self.n_nontarget)
            self._rates32 = (frr, far)
        return self._rates32

    def rates64(self):
        """``(frr, far)`` as float64."""
        return self.n_miss / self.n_target, self.n_fa / self.n_nontarget

    def speechbrain_candidates(self):
        """SpeechBrain's candidate threshold list and, for each, the index of its operating point.

        SpeechBrain sorts the distinct scores together with the midpoints between consecutive
        distinct scores (computed in the scores' dtype). The operating point at any threshold
        ``t`` is the one at the largest distinct score ``<= t``.

        Returns
        -------
        thresholds : np.ndarray
            Candidate thresholds, ascending (length ``2K - 1``).
        k : np.ndarray
            Index into ``u`` / ``n_miss`` / ``n_fa`` of each candidate's operating point.
        """
        if self.candidates is None:
            u = self.u
            mids = (u[:-1] + u[1:]) / u.dtype.type(2)
            thresholds = np.sort(np.concatenate([u, mids]), kind="stable")
            k = np.searchsorted(u, thresholds, side="right") - 1
            self.candidates = (thresholds, k)
        return self.candidates


def _eer_from_points(points):
    """EER and threshold, bit-exact with ``speechbrain.utils.metric_stats.EER``.

    SpeechBrain walks its candidate thresholds in ascending order and moves to candidate ``i``
    when ``float32(|FAR_i - FRR_i|) < |FAR_best - FRR_best|`` (the right-hand side in float64 from
    the float32 rates). ``FAR - FRR`` never increases with the threshold, so ``|FAR - FRR|`` is
    V-shaped and only the candidates whose float32 gap equals the minimum can be picked last:
    the first of them is always taken, anything outside them never replaces it, and the sequential
    rule is replayed on those few candidates only.
    """
    frr32, far32 = points.rates32()
    gap32 = np.abs(far32 - frr32)  # float32 arithmetic, as torch does
    gap64 = np.abs(far32.astype(np.float64) - frr32.astype(np.float64))
    thresholds, k = points.speechbrain_candidates()
    cand_gap32 = gap32[k]
    window = np.flatnonzero(cand_gap32 == cand_gap32.min())
    best = int(window[0])
    for pos in window[1:].tolist():
        if float(cand_gap32[pos]) < float(gap64[k[best]]):
            best = pos
    kb = k[best]
    value = (float(far32[kb]) + float(frr32[kb])) / 2
    return value, float(thresholds[best])


def _min_dcf_from_points(points, p_target, c_miss, c_fa, normalise):
    """minDCF with SpeechBrain's float32 arithmetic and first-minimum tie rule."""
    frr32, far32 = points.rates32()
    c_det = (np.float32(c_miss) * frr32) * np.float32(p_target) + (
        np.float32(c_fa) * far32
    ) * np.float32(1 - p_target)
    thresholds, k = points.speechbrain_candidates()
    best = int(np.argmin(c_det[k]))  # first minimum, as torch.min
    value = float(c_det[k[best]])
    if normalise:
        value /= min(c_miss * p_target, c_fa * (1 - p_target))
    return value, float(thresholds[best])


def _tar_at_far_from_points(points, far):
    """Highest TAR over thresholds (distinct scores) whose FAR is <= ``far``."""
    far64 = points.n_fa / points.n_nontarget
    # FAR is non-increasing in the threshold and the largest score always gives FAR = 0, so the
    # feasible thresholds form a suffix; its first element has the highest TAR.
    first = int(np.argmax(far64 <= far))
    tar = 1.0 - points.n_miss[first] / points.n_target
    return float(tar), float(points.u[first])


def _check_cost_params(p_target, c_miss, c_fa):
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive, got c_miss={c_miss}, c_fa={c_fa}")


def _check_far(far):
    if not (isinstance(far, int | float | np.floating) and 0.0 <= far <= 1.0):
        raise ValueError(f"far must be a number in [0, 1], got {far!r}")


def eer(scores, labels):
    """Equal error rate and its threshold.

    Reproduces ``speechbrain.utils.metric_stats.EER(positive_scores, negative_scores)`` exactly
    (same candidate thresholds, same float32 rates, same tie rule) in O(N log N): among the
    candidate thresholds, the one minimising ``|FAR - FRR|`` (the first on ties) is chosen and
    ``(FAR + FRR) / 2`` is returned there.

    Parameters
    ----------
    scores : np.ndarray or torch.Tensor
        1-D trial scores, higher = more likely target.
    labels : np.ndarray or torch.Tensor
        1-D labels, 1 = target, 0 = non-target.

    Returns
    -------
    eer : float
        Equal error rate as a fraction.
    threshold : float
        Threshold at the EER (accept if ``score > threshold``).

    Raises
    ------
    ValueError
        On mismatched lengths, NaN/infinite scores, labels other than 0/1, or when there are no
        target or no non-target trials.
    """
    return _eer_from_points(_OperatingPoints.from_scores(scores, labels))


def min_dcf(scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0, normalise=True):
    """Minimum of the detection cost function over all thresholds.

    ``C_det(t) = c_miss * FRR(t) * p_target + c_fa * FAR(t) * (1 - p_target)``, minimised over
    SpeechBrain's candidate thresholds (first minimum on ties). With ``normalise=False`` the
    result equals ``speechbrain.utils.metric_stats.minDCF`` exactly.

    Parameters
    ----------
    scores, labels : np.ndarray or torch.Tensor
        See :func:`eer`.
    p_target : float
        Prior probability of a target trial, in (0, 1).
    c_miss, c_fa : float
        Costs of a miss and of a false alarm (positive).
    normalise : bool
        If True, divide by ``min(c_miss * p_target, c_fa * (1 - p_target))`` (the cost of the
        best trivial system; NIST convention), so that 1.0 means "no better than always
        rejecting or always accepting".

    Returns
    -------
    value : float
        The (normalised) minDCF.
    threshold : float
        Threshold reaching it (accept if ``score > threshold``).
    """
    _check_cost_params(p_target, c_miss, c_fa)
    points = _OperatingPoints.from_scores(scores, labels)
    return _min_dcf_from_points(points, p_target, c_miss, c_fa, normalise)


def tar_at_far(scores, labels, far):
    """True-accept rate at a false-accept rate constraint.

    The highest ``TAR(t) = P(target score > t)`` among thresholds ``t`` (distinct score values)
    whose ``FAR(t) = P(non-target score > t)`` is ``<= far``. The largest score always satisfies
    the constraint (FAR 0), so a result always exists.

    Parameters
    ----------
    scores, labels : np.ndarray or torch.Tensor
        See :func:`eer`.
    far : float
        Maximum false-accept rate, a fraction in [0, 1].

    Returns
    -------
    tar : float
        True-accept rate (fraction).
    threshold : float
        The smallest feasible threshold, i.e. the one reaching ``tar`` (accept if
        ``score > threshold``).
    """
    _check_far(far)
    return _tar_at_far_from_points(_OperatingPoints.from_scores(scores, labels), far)


def det_curve(scores, labels):
    """All operating points of the detection-error trade-off curve.

    Parameters
    ----------
    scores, labels : np.ndarray or torch.Tensor
        See :func:`eer`.

    Returns
    -------
    far : np.ndarray
        False-accept rates (float64), non-increasing.
    frr : np.ndarray
        False-reject rates (float64), non-decreasing.
    thresholds : np.ndarray
        Thresholds (float64, ascending): ``-inf`` (accept everything: FAR 1, FRR 0) followed by
        every distinct score value (accept if ``score > threshold``).
    """
    points = _OperatingPoints.from_scores(scores, labels)
    frr, far = points.rates64()
    thresholds = np.concatenate([[-np.inf], points.u.astype(np.float64)])
    return np.concatenate([[1.0], far]), np.concatenate([[0.0], frr]), thresholds


def verification_metrics(scores, labels, p_targets=(0.01, 0.05), far_targets=(0.01, 0.001)):
    """The standard set of verification metrics from a single sort of the trials.

    Parameters
    ----------
    scores, labels : np.ndarray or torch.Tensor
        See :func:`eer`.
    p_targets : sequence of float
        Target priors for the normalised minDCF (``c_miss = c_fa = 1``).
    far_targets : sequence of float
        FAR constraints for the TAR@FAR values.

    Returns
    -------
    dict
        JSON-serialisable (python floats / ints), with keys ``"eer"``, ``"eer_threshold"``,
        ``f"min_dcf@{p:g}"`` per prior (normalised), ``f"tar@far={f:g}"`` per FAR,
        ``"accuracy_at_eer_threshold"`` (fraction of trials decided correctly when accepting
        ``score > eer_threshold``), ``"n_target"`` and ``"n_nontarget"``. Rates are fractions.
    """
    for p in p_targets:
        _check_cost_params(p, 1.0, 1.0)
    for f in far_targets:
        _check_far(f)
    points = _OperatingPoints.from_scores(scores, labels)
    eer_value, eer_threshold = _eer_from_points(points)
    out = {"eer": eer_value, "eer_threshold": eer_threshold}
    for p in p_targets:
        out[f"min_dcf@{p:g}"] = _min_dcf_from_points(points, p, 1.0, 1.0, normalise=True)[0]
    for f in far_targets:
        out[f"tar@far={f:g}"] = _tar_at_far_from_points(points, f)[0]
    # operating point at the EER threshold: the largest distinct score <= threshold
    k = int(np.searchsorted(points.u, eer_threshold, side="right")) - 1
    k = max(k, 0)
    n_correct = (points.n_target - int(points.n_miss[k])) + (
        points.n_nontarget - int(points.n_fa[k])
    )
    out["accuracy_at_eer_threshold"] = n_correct / (points.n_target + points.n_nontarget)
    out["n_target"] = points.n_target
    out["n_nontarget"] = points.n_nontarget
    logger.debug("verification metrics: %s", out)
    return out


class SortedTrials:
    """One trial list sorted once, for the metrics of many integer reweightings of it (the
    resamples of a bootstrap, :mod:`sepid.speaker.bootstrap`).

    ``weights[i]`` (in the sorted order, :attr:`order`) is how many times trial ``i`` appears
    in the reweighted list; :meth:`metrics` then returns exactly what :func:`eer` and
    :func:`min_dcf` return on the list in which every trial is repeated that many times (the
    same operating points, float32 rates and tie rules: the functions above, on counts from
    weighted cumulative sums over the one sort). A trial of weight 0 is absent; its score
    stays a candidate threshold, whose operating point then repeats a neighbour's or is "accept
    everything" (FRR 0, FAR 1), which neither the EER nor the minDCF can take over the list's
    own points. Each reweighting costs O(N), no sort.

    Parameters
    ----------
    scores, labels : np.ndarray or torch.Tensor
        See :func:`eer`.
    """

    def __init__(self, scores, labels):
        s, y = _validate(scores, labels)
        self.order = np.argsort(s, kind="stable")
        s_sorted = s[self.order]
        self.labels = y[self.order]  # bool
        self.last = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))
        u = s_sorted[self.last]
        self._shared = _OperatingPoints(u, None, None, 0, 0)
        self._shared.speechbrain_candidates()

    def points(self, weights):
        """The operating points of the list reweighted by ``weights`` (sorted order, integers
        >= 0); None when it has no target or no non-target trial."""
        weights = np.asarray(weights)
        if not np.issubdtype(weights.dtype, np.integer):
            raise ValueError(f"weights must be integers (trial counts), got {weights.dtype}")
        cum_target = np.cumsum(weights * self.labels, dtype=np.int64)[self.last]
        cum_all = np.cumsum(weights, dtype=np.int64)[self.last]
        n_target = int(cum_target[-1])
        n_nontarget = int(cum_all[-1]) - n_target
        if n_target == 0 or n_nontarget == 0:
            return None
        return _OperatingPoints(
            u=self._shared.u,
            n_miss=cum_target,
            n_fa=n_nontarget - (cum_all - cum_target),
            n_target=n_target,
            n_nontarget=n_nontarget,
            candidates=self._shared.candidates,
        )

    def metrics(self, weights, p_targets=(0.01,)):
        """``{"eer": ..., "min_dcf@<p>": ...}`` (normalised minDCF, ``c_miss = c_fa = 1``) of
        the reweighted list, or None when it lacks a class (see :meth:`points`)."""
        points = self.points(weights)
        if points is None:
            return None
        out = {"eer": _eer_from_points(points)[0]}
        for p in p_targets:
            out[f"min_dcf@{p:g}"] = _min_dcf_from_points(points, p, 1.0, 1.0, True)[0]
        return out

"""Tests of sepid.speaker.metrics (and the DET / histogram plots built on it)."""

import json

import numpy as np
import pytest
import torch
from speechbrain.utils.metric_stats import EER, minDCF

from sepid.report.plots import plot_det, plot_histogram
from sepid.speaker.metrics import (
    det_curve,
    eer,
    min_dcf,
    tar_at_far,
    verification_metrics,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Hand-made list: targets at 0.9, 0.8, 0.6; non-targets at 0.7, 0.5, 0.4 (accept if score > t).
#   t     FRR=P(tgt<=t)  FAR=P(non>t)  |FAR-FRR|  C_det(p=0.01)=0.01*FRR+0.99*FAR
#   0.4   0              2/3           2/3        0.66
#   0.5   0              1/3           1/3        0.33
#   0.6   1/3            1/3           0          0.3333...
#   0.7   1/3            0             1/3        0.00333...   <- minDCF
#   0.8   2/3            0             2/3        0.00666...
#   0.9   1              0             1          0.01
# EER = 1/3 at t = 0.6; minDCF = 0.01/3 at t = 0.7, normalised by min(0.01, 0.99) -> 1/3.
# TAR@FAR<=0: first t with FAR = 0 is 0.7 -> TAR = P(tgt > 0.7) = 2/3.
# TAR@FAR<=1/3: t = 0.5 -> TAR = 1. Accuracy at t = 0.6: 0.9, 0.8 accepted (right), 0.7 accepted
# (wrong), 0.6 rejected (wrong), 0.5, 0.4 rejected (right) -> 4/6.
HAND_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
HAND_LABELS = np.array([1, 1, 0, 1, 0, 0])
THIRD32 = float(np.float32(1) / np.float32(3))  # SpeechBrain's rates are float32


def _split(scores, labels):
    scores = torch.as_tensor(scores)
    labels = torch.as_tensor(labels)
    return scores[labels == 1], scores[labels == 0]


def _random_lists(seed, count=12):
    """Random score lists of a few hundred trials, with and without ties."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(100, 400))
        if i % 3 == 0:
            scores = rng.normal(size=n)
        elif i % 3 == 1:
            scores = np.round(rng.normal(size=n), 1)  # many ties
        else:
            scores = rng.integers(0, 8, size=n) / 7.0  # heavy ties
        labels = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(np.int64)
        labels[0], labels[1] = 1, 0
        out.append((torch.tensor(scores, dtype=torch.float32), torch.tensor(labels)))
    return out


def _brute_points(scores, labels):
    """(t, far, frr) for every distinct score, by direct counting (float64)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    pos, neg = s[y], s[~y]
    return [(t, np.mean(neg > t), np.mean(pos <= t)) for t in np.unique(s)]


# ---------------------------------------------------------------------------- hand-computed cases


def test_hand_computed_eer_min_dcf_tar():
    value, threshold = eer(HAND_SCORES, HAND_LABELS)
    assert value == THIRD32
    assert threshold == 0.6

    dcf, dcf_threshold = min_dcf(HAND_SCORES, HAND_LABELS, p_target=0.01, normalise=False)
    assert dcf == pytest.approx(0.01 / 3, rel=1e-6)
    assert dcf_threshold == 0.7
    dcf_norm, _ = min_dcf(HAND_SCORES, HAND_LABELS, p_target=0.01)
    assert dcf_norm == pytest.approx(1 / 3, rel=1e-6)

    assert tar_at_far(HAND_SCORES, HAND_LABELS, 0.0) == (pytest.approx(2 / 3), 0.7)
    assert tar_at_far(HAND_SCORES, HAND_LABELS, 1 / 3) == (1.0, 0.5)
    assert tar_at_far(HAND_SCORES, HAND_LABELS, 0.5) == (1.0, 0.5)


def test_hand_computed_det_curve():
    far, frr, thresholds = det_curve(HAND_SCORES, HAND_LABELS)
    np.testing.assert_array_equal(thresholds, [-np.inf, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    np.testing.assert_allclose(far, [1, 2 / 3, 1 / 3, 1 / 3, 0, 0, 0])
    np.testing.assert_allclose(frr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])


def test_hand_computed_verification_metrics():
    m = verification_metrics(HAND_SCORES, HAND_LABELS, p_targets=(0.01,), far_targets=(0.0, 0.5))
    assert set(m) == {
        "eer",
        "eer_threshold",
        "min_dcf@0.01",
        "tar@far=0",
        "tar@far=0.5",
        "accuracy_at_eer_threshold",
        "n_target",
        "n_nontarget",
    }
    assert m["eer"] == THIRD32
    assert m["eer_threshold"] == 0.6
    assert m["min_dcf@0.01"] == pytest.approx(1 / 3, rel=1e-6)
    assert m["tar@far=0"] == pytest.approx(2 / 3)
    assert m["tar@far=0.5"] == 1.0
    assert m["accuracy_at_eer_threshold"] == pytest.approx(4 / 6)
    assert (m["n_target"], m["n_nontarget"]) == (3, 3)


def test_default_keys_and_json_serialisable():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=500)
    scores = torch.tensor(rng.normal(size=500) + labels, dtype=torch.float32)
    m = verification_metrics(scores, torch.tensor(labels))
    assert list(m) == [
        "eer",
        "eer_threshold",
        "min_dcf@0.01",
        "min_dcf@0.05",
        "tar@far=0.01",
        "tar@far=0.001",
        "accuracy_at_eer_threshold",
        "n_target",
        "n_nontarget",
    ]
    assert all(type(v) in (float, int) for v in m.values())
    json.dumps(m)


def test_all_tied_scores():
    # One distinct score 0.5 -> single candidate t = 0.5: every trial rejected, FRR = 1, FAR = 0.
    scores = np.full(4, 0.5)
    labels = np.array([1, 0, 1, 0])
    assert eer(scores, labels) == (0.5, 0.5)
    assert tar_at_far(scores, labels, 0.01) == (0.0, 0.5)


def test_ties_midpoint_threshold_like_speechbrain():
    # Targets 3, 3, 0; non-target 3. Candidates (SpeechBrain): 0, midpoint 1.5, 3.
    #   t = 0 and 1.5: FRR = 1/3 (the target at 0), FAR = 1 -> gap 2/3
    #   t = 3:         FRR = 1,                    FAR = 0 -> gap 1
    # In float32, |1 - float32(1/3)| rounds below its float64 value, so SpeechBrain's strict
    # "<" moves from t = 0 to the midpoint t = 1.5; EER = (1 + 1/3) / 2 = 2/3.
    scores = torch.tensor([3.0, 3.0, 3.0, 0.0])
    labels = torch.tensor([1, 0, 1, 1])
    value, threshold = eer(scores, labels)
    assert (value, threshold) == EER(*_split(scores, labels))
    assert threshold == 1.5
    assert value == pytest.approx(2 / 3, abs=1e-7)


# ------------------------------------------------------------------------------ limiting cases


def test_perfectly_separable():
    scores = np.array([0.9, 0.8, 0.75, 0.3, 0.2, 0.1, 0.0])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    value, threshold = eer(scores, labels)
    assert value == 0.0
    assert 0.3 <= threshold < 0.75
    assert min_dcf(scores, labels, p_target=0.01)[0] == 0.0
    assert min_dcf(scores, labels, p_target=0.05)[0] == 0.0
    assert tar_at_far(scores, labels, 0.0)[0] == 1.0
    m = verification_metrics(scores, labels)
    assert m["accuracy_at_eer_threshold"] == 1.0
    assert m["tar@far=0.001"] == 1.0


def test_identical_distributions_eer_half():
    rng = np.random.default_rng(123)
    n = 40_000
    scores = rng.normal(size=n)
    labels = rng.integers(0, 2, size=n)
    assert eer(scores, labels)[0] == pytest.approx(0.5, abs=0.02)
    # min_dcf of a useless system: ~1 when normalised (never below the trivial system by much)
    assert min_dcf(scores, labels, p_target=0.01)[0] == pytest.approx(1.0, abs=0.05)


# ------------------------------------------------------------------- agreement with references


@pytest.mark.parametrize("seed", [0, 1])
def test_eer_matches_speechbrain_exactly(seed):
    for scores, labels in _random_lists(seed):
        assert eer(scores, labels) == EER(*_split(scores, labels))


def test_eer_matches_speechbrain_float64():
    for scores, labels in _random_lists(7, count=4):
        scores = scores.double()
        assert eer(scores, labels) == EER(*_split(scores, labels))


@pytest.mark.parametrize(
    ("p_target", "c_miss", "c_fa"), [(0.01, 1.0, 1.0), (0.05, 1.0, 1.0), (0.3, 10.0, 1.0)]
)
def test_min_dcf_unnormalised_matches_speechbrain_exactly(p_target, c_miss, c_fa):
    for scores, labels in _random_lists(3, count=6):
        ours = min_dcf(scores, labels, p_target=p_target, c_miss=c_miss, c_fa=c_fa, normalise=False)
        ref = minDCF(*_split(scores, labels), c_miss=c_miss, c_fa=c_fa, p_target=p_target)
        assert ours == ref


def test_min_dcf_against_brute_force():
    for scores, labels in _random_lists(11, count=6):
        for p in (0.01, 0.05, 0.5):
            costs = [p * frr + (1 - p) * far for _, far, frr in _brute_points(scores, labels)]
            expected = min(costs) / min(p, 1 - p)
            assert min_dcf(scores, labels, p_target=p)[0] == pytest.approx(expected, rel=1e-5)


def test_tar_at_far_against_brute_force():
    for scores, labels in _random_lists(5, count=8):
        points = _brute_points(scores, labels)
        pos = np.asarray(scores, dtype=np.float64)[np.asarray(labels) == 1]
        for far in (0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0):
            best_tar, best_t = -1.0, None
            for t, f, _ in points:
                tar = float(np.mean(pos > t))
                if f <= far and tar > best_tar:  # ascending t: keeps the smallest threshold
                    best_tar, best_t = tar, t
            tar, threshold = tar_at_far(scores, labels, far)
            assert tar == pytest.approx(best_tar, abs=1e-12)
            assert threshold == pytest.approx(best_t)


def test_det_curve_against_brute_force():
    scores, labels = _random_lists(2, count=2)[1]
    far, frr, thresholds = det_curve(scores, labels)
    points = _brute_points(scores, labels)
    assert len(far) == len(points) + 1
    np.testing.assert_allclose(thresholds[1:], [p[0] for p in points])
    np.testing.assert_allclose(far[1:], [p[1] for p in points])
    np.testing.assert_allclose(frr[1:], [p[2] for p in points])
    assert np.all(np.diff(far) <= 0) and np.all(np.diff(frr) >= 0)


def test_numpy_torch_and_bool_labels_agree():
    scores, labels = _random_lists(9, count=1)[0]
    a = verification_metrics(scores, labels)
    b = verification_metrics(scores.numpy(), labels.numpy().astype(bool))
    assert a == b


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, 0.2, 0.3], [0, 0, 0], "no target"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "no non-target"),
        ([0.1, 0.2, 0.3], [1, 0], "same length"),
        ([0.1, float("nan"), 0.3], [1, 0, 1], "NaN"),
        ([0.1, float("inf"), 0.3], [1, 0, 1], "infinite"),
        ([0.1, 0.2, 0.3], [1, 0, 2], "0 \\(non-target\\) or 1"),
        ([[0.1, 0.2]], [[1, 0]], "1-D"),
    ],
)
def test_bad_input(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        verification_metrics(np.array(scores), np.array(labels))
    with pytest.raises(ValueError, match=match):
        eer(np.array(scores), np.array(labels))


def test_bad_parameters():
    with pytest.raises(ValueError, match="p_target"):
        min_dcf(HAND_SCORES, HAND_LABELS, p_target=1.5)
    with pytest.raises(ValueError, match="far"):
        tar_at_far(HAND_SCORES, HAND_LABELS, -0.1)


# --------------------------------------------------------------------------------------- plots


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=300)
    scores = rng.normal(size=300) + 2 * labels
    det = plot_det(scores, labels, tmp_path / "sub" / "det.png", title="DET")
    hist = plot_histogram(rng.normal(10, 3, size=200), tmp_path / "hist.png", xlabel="SI-SDRi (dB)")
    for path in (det, hist):
        data = path.read_bytes()
        assert len(data) > 1000
        assert data[:8] == PNG_MAGIC

"""Confidence intervals: the speaker bootstrap of verification metrics
(sepid.speaker.bootstrap, on sepid.speaker.metrics.SortedTrials) and the bootstrap over items of
means (sepid.report.intervals)."""

import numpy as np
import pytest

from sepid.report.intervals import mean_interval, paired_mean_interval, verdict
from sepid.speaker.bootstrap import SpeakerBootstrap
from sepid.speaker.metrics import SortedTrials, eer, min_dcf, verification_metrics


def trial_list(n_speakers, n_trials, seed, separation=1.5, decimals=None):
    """A trial list over ``n_speakers``: half targets, scores N(separation, 1) for targets and
    N(0, 1) for non-targets, plus a per-speaker offset (trials of a speaker are correlated, as
    real ones are); ``decimals`` rounds the scores (ties)."""
    rng = np.random.default_rng(seed)
    enrol = rng.integers(n_speakers, size=n_trials)
    labels = rng.integers(2, size=n_trials)
    test = np.where(
        labels == 1, enrol, (enrol + rng.integers(1, n_speakers, n_trials)) % n_speakers
    )
    offset = rng.normal(scale=0.5, size=n_speakers)
    scores = rng.normal(size=n_trials) + separation * labels + offset[enrol]
    if decimals is not None:
        scores = np.round(scores, decimals)
    names = np.array([f"spk{i:04d}" for i in range(n_speakers)])
    return names[enrol], names[test], labels, scores.astype(np.float32)


def slow_resample_metrics(boot, enrol, test, labels, scores, b):
    """The reference: resample ``b``'s trial list written out trial by trial (a target trial of
    s repeated c_s times, a non-target one of s, t c_s * c_t times), then the metrics."""
    index = {s: i for i, s in enumerate(boot.speakers)}
    counts = boot.counts[b]
    kept_scores, kept_labels = [], []
    for e, t, label, score in zip(enrol, test, labels, scores, strict=True):
        c_e, c_t = counts[index[e]], counts[index[t]]
        repeat = c_e if label == 1 else c_e * c_t
        kept_scores += [score] * int(repeat)
        kept_labels += [label] * int(repeat)
    s, y = np.asarray(kept_scores, dtype=scores.dtype), np.asarray(kept_labels)
    if y.sum() in (0, len(y)):
        return None
    return [eer(s, y)[0], min_dcf(s, y, 0.01)[0], min_dcf(s, y, 0.05)[0]]


@pytest.mark.parametrize("decimals", [None, 1])
def test_resamples_equal_the_slow_reference(decimals):
    enrol, test, labels, scores = trial_list(7, 240, seed=3, decimals=decimals)
    boot = SpeakerBootstrap(enrol, test, labels, samples=40, seed=5, p_targets=(0.01, 0.05))
    values = boot.resampled(scores)
    undefined = 0
    for b in range(boot.samples):
        ref = slow_resample_metrics(boot, enrol, test, labels, scores, b)
        if ref is None:
            assert np.isnan(values[b]).all()
            undefined += 1
        else:
            assert values[b].tolist() == ref  # bit-exact: the same EER/minDCF code
    assert undefined < boot.samples


def test_unit_weights_give_the_point_estimate():
    _, _, labels, scores = trial_list(20, 2000, seed=1, decimals=2)
    got = SortedTrials(scores, labels).metrics(np.ones(len(labels), dtype=np.int64), (0.01,))
    want = verification_metrics(scores, labels, p_targets=(0.01,))
    assert got == {"eer": want["eer"], "min_dcf@0.01": want["min_dcf@0.01"]}


def test_interval_contains_estimate_is_deterministic_and_shrinks_with_speakers():
    widths = []
    for n_speakers in (20, 400):
        enrol, test, labels, scores = trial_list(n_speakers, 20_000, seed=2)
        point = verification_metrics(scores, labels, p_targets=(0.01,))
        boot = SpeakerBootstrap(enrol, test, labels, samples=200, seed=11)
        intervals = boot.intervals(scores)
        for key in ("eer", "min_dcf@0.01"):
            assert intervals[key]["low"] <= point[key] <= intervals[key]["high"]
            assert intervals[key]["unit"] == "speaker"
            assert intervals[key]["n_units"] == n_speakers
        again = SpeakerBootstrap(enrol, test, labels, samples=200, seed=11).intervals(scores)
        assert again == intervals
        other = SpeakerBootstrap(enrol, test, labels, samples=200, seed=12).intervals(scores)
        assert other != intervals
        widths.append(intervals["eer"]["high"] - intervals["eer"]["low"])
    assert widths[1] < 0.75 * widths[0], widths  # 20x the speakers, the same trials: narrower


def test_speaker_resampling_is_wider_than_trial_resampling():
    # trials of a speaker share its offset: resampling speakers sees that, trials would not
    enrol, test, labels, scores = trial_list(30, 20_000, seed=4)
    boot = SpeakerBootstrap(enrol, test, labels, samples=200, seed=1)
    speaker = boot.intervals(scores)["eer"]
    rng = np.random.default_rng(1)
    trials = SortedTrials(scores, labels)
    per_trial = [
        trials.metrics(rng.multinomial(len(labels), np.full(len(labels), 1 / len(labels))))["eer"]
        for _ in range(200)
    ]
    assert speaker["high"] - speaker["low"] > np.subtract(*np.percentile(per_trial, [97.5, 2.5]))


def test_paired_difference():
    enrol, test, labels, scores = trial_list(50, 10_000, seed=6)
    rng = np.random.default_rng(0)
    better = scores + 1.0 * labels  # the same trials, targets scored higher
    noisy = scores + rng.normal(scale=0.01, size=scores.shape).astype(np.float32)
    boot = SpeakerBootstrap(enrol, test, labels, samples=200, seed=3)
    base = boot.resampled(scores)
    diff = boot.compare(boot.resampled(better), base)["eer"]
    assert diff["paired"] and diff["high"] < 0
    assert verdict(diff, lower_is_better=True) == "beats"
    same = boot.compare(boot.resampled(noisy), base)["eer"]
    assert same["low"] < 0 < same["high"] or same["low"] == same["high"] == 0
    assert verdict(same, lower_is_better=True) == "matches"
    # the paired interval is narrower than either system's own (shared speaker effects cancel)
    own = boot.intervals(scores, values=base)["eer"]
    assert same["high"] - same["low"] < own["high"] - own["low"]


def test_no_intervals_with_zero_samples_and_bad_options():
    enrol, test, labels, scores = trial_list(5, 100, seed=0)
    assert SpeakerBootstrap(enrol, test, labels, samples=0).intervals(scores) == {}
    with pytest.raises(ValueError, match="bootstrap_samples"):
        SpeakerBootstrap(enrol, test, labels, samples=-1)
    with pytest.raises(ValueError, match="bootstrap_confidence"):
        SpeakerBootstrap(enrol, test, labels, confidence=95)
    with pytest.raises(ValueError, match="one of each per trial"):
        SpeakerBootstrap(enrol[:-1], test, labels)


def test_mean_interval_and_paired_mean_interval():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 2.0, 30), rng.normal(1.0, 2.0, 3000)
    a = mean_interval(small, samples=500, seed=1)
    assert a["low"] <= small.mean() <= a["high"] and a["unit"] == "item" and a["n_units"] == 30
    assert mean_interval(small, samples=500, seed=1) == a
    b = mean_interval(large, samples=500, seed=1)
    assert b["high"] - b["low"] < (a["high"] - a["low"]) / 5
    # the normal-theory width 2 x 1.96 s / sqrt(n), within sampling error
    assert (a["high"] - a["low"]) == pytest.approx(2 * 1.96 * small.std() / np.sqrt(30), rel=0.2)
    # missing values are left out, as the mean leaves them out; too few: no interval
    assert mean_interval([*small, None], samples=500, seed=1) == a
    assert mean_interval([1.0, None], samples=500) is None
    assert mean_interval([1.0, float("inf"), 2.0], samples=500) is None
    # a slow loop over explicit resamples gives the same interval
    rng = np.random.default_rng(1)
    counts = rng.multinomial(30, np.full(30, 1 / 30), size=500)
    means = [np.mean(np.repeat(small, c)) for c in counts]
    assert [a["low"], a["high"]] == pytest.approx(np.percentile(means, [2.5, 97.5]), abs=1e-12)
    # paired: a constant improvement has a zero-width interval at it
    paired = paired_mean_interval(small + 0.5, small, samples=200, seed=2)
    assert paired["difference"] == pytest.approx(0.5)
    assert paired["interval"]["low"] == pytest.approx(0.5) == paired["interval"]["high"]
    assert verdict(paired["interval"], lower_is_better=False) == "beats"
    assert paired_mean_interval([1.0, None, 3.0], [0.0, 1.0, 1.0], samples=10)["n"] == 2

"""Confidence intervals of verification metrics by a bootstrap over speakers.

Trials are not independent: every trial of a speaker shares that speaker's voice, and a trial
list reuses each utterance in many trials, so resampling trials as if independent gives
intervals far too narrow. The literature resamples the unit the trials depend on: Bolle,
Ratha and Pankanti's *subsets bootstrap* (Computer Vision and Image Understanding 93, 2004)
resamples whole subjects with all their scores, and Wu, Martin, Greenberg and Kacker (NIST,
"Data dependency on measurement uncertainties in speaker recognition evaluation", Proc. SPIE
8382, 2012) group target and non-target scores into sets by speaker and resample the sets
(their "one-layer" bootstrap; the "two-layer" one resamples scores within sets too). A
non-target trial involves two speakers, who must both be in a resample for the trial to be in
it; when speakers are drawn with replacement, a speaker drawn ``c_s`` times stands for ``c_s``
different speakers, and the non-target trials between two drawn speakers are the crossed
product of their copies, as in Owen's bootstrap for crossed random effects ("The pigeonhole
bootstrap", Annals of Applied Statistics 1, 2007).

The exact scheme (:class:`SpeakerBootstrap`): the ``S`` speakers that appear on either side of
the trial list are drawn ``S`` times with replacement (a multinomial draw of counts ``c_s``,
``sum c_s = S``); the resampled list holds

- each target trial of speaker ``s`` ``c_s`` times (its copies are different speakers: no
  target trial crosses two copies),
- each non-target trial between speakers ``s`` and ``t`` ``c_s * c_t`` times,

so a trial is kept exactly when both its sides' speakers were drawn. The EER and minDCF of a
resample are those of this list, computed exactly by :class:`sepid.speaker.metrics.SortedTrials`
(the project's own EER/minDCF on weighted counts over one sort; no trial list is materialised).
A resample with no target or no non-target trial has no metric and is left out (counted as
``n_undefined``). The interval is the percentile interval
(:func:`sepid.report.intervals.percentile_interval`). Every system scored on the same trials
gets the same resamples (same seed), so the paired difference of two systems is the difference
of their resampled values, resample by resample (:meth:`SpeakerBootstrap.compare`).

Unlike Wu et al., one draw of speakers serves both the target and the non-target trials (they
share the speakers); both sides of a non-target trial come from the same draw.
"""

import numpy as np

from sepid.report.intervals import check_bootstrap_options, interval_record, percentile_interval
from sepid.speaker.metrics import SortedTrials


class SpeakerBootstrap:
    """The speaker resamples of one trial list (module docstring).

    Arguments
    ---------
    enrol_speakers, test_speakers : sequence of str
        The speaker of each trial's enrolment and test utterance.
    labels : sequence of int
        1 target, 0 non-target.
    samples : int
        Number of resamples (0: no intervals).
    seed : int
        Seed of ``numpy.random.default_rng``.
    confidence : float
        Level of the intervals.
    p_targets : sequence of float
        Priors of the normalised minDCF values resampled (``min_dcf@<p>``).
    """

    def __init__(
        self,
        enrol_speakers,
        test_speakers,
        labels,
        samples=1000,
        seed=1986,
        confidence=0.95,
        p_targets=(0.01,),
    ):
        check_bootstrap_options(samples, seed, confidence)
        if not len(enrol_speakers) == len(test_speakers) == len(labels):
            raise ValueError(
                f"{len(enrol_speakers)} enrolment speakers, {len(test_speakers)} test speakers "
                f"and {len(labels)} labels: give one of each per trial."
            )
        self.speakers, index = np.unique(
            np.concatenate(
                [np.asarray(enrol_speakers, dtype=str), np.asarray(test_speakers, dtype=str)]
            ),
            return_inverse=True,
        )
        n = len(labels)
        self.enrol, self.test = index[:n], index[n:]
        self.labels = np.asarray(labels)
        self.samples, self.seed, self.confidence = int(samples), int(seed), confidence
        self.p_targets = tuple(p_targets)
        self.keys = ("eer", *(f"min_dcf@{p:g}" for p in self.p_targets))
        n_spk = len(self.speakers)
        self.values = {}  # (model, scoring) -> resampled(), kept by the evaluation's report
        rng = np.random.default_rng(self.seed)
        self.counts = rng.multinomial(n_spk, np.full(n_spk, 1.0 / n_spk), size=self.samples)

    def resampled(self, scores):
        """``[samples, len(keys)]`` metric values of ``scores`` (one per trial, in the trial
        order) over the resamples; NaN rows where a resample lacks a class."""
        trials = SortedTrials(scores, self.labels)
        n_spk = len(self.speakers)
        enrol = self.enrol[trials.order].astype(np.int32)
        # a target trial's second factor is a trailing 1 (weight c_s, not c_s ** 2)
        second = np.where(trials.labels, n_spk, self.test[trials.order]).astype(np.int32)
        out = np.full((self.samples, len(self.keys)), np.nan)
        for b, c in enumerate(self.counts):
            c = np.append(c, 1).astype(np.int32)  # int32 gathers: half the memory traffic
            metrics = trials.metrics(c[enrol] * c[second], self.p_targets)
            if metrics is not None:
                out[b] = [metrics[k] for k in self.keys]
        return out

    def _records(self, values, **extra):
        low, high = percentile_interval(values, self.confidence)
        undefined = int(np.isnan(values[:, 0]).sum())
        return {
            key: interval_record(
                low[j],
                high[j],
                confidence=self.confidence,
                samples=self.samples,
                seed=self.seed,
                unit="speaker",
                n_units=len(self.speakers),
                n_undefined=undefined,
                **extra,
            )
            for j, key in enumerate(self.keys)
        }

    def intervals(self, scores, values=None):
        """``{metric: interval record}`` of one system's ``scores`` (``values``: its
        :meth:`resampled` values when already computed)."""
        if self.samples == 0:
            return {}
        return self._records(self.resampled(scores) if values is None else values)

    def compare(self, values_a, values_b):
        """``{metric: interval record of a - b}``, the paired difference of two systems'
        :meth:`resampled` values on the same trials."""
        if self.samples == 0:
            return {}
        return self._records(np.asarray(values_a) - np.asarray(values_b), paired=True)

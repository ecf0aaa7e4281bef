"""Loss helpers: the ArcFace margin schedule.

From scratch, a full angular margin at step one makes a small model worse on unseen speakers;
WeSpeaker (``wespeaker/utils/schedulers.py: MarginScheduler``) trains with margin 0 first and then
raises it to its final value. :class:`MarginScheduler` does the same, by optimizer step, with the
hold and ramp given in steps or as fractions of the run (:class:`sepid.training.schedules.RunLength`).
"""

import math

from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

from sepid.training.schedules import RunLength


def set_aam_margin(loss, margin):
    """Sets the margin of an ``AdditiveAngularMargin`` (or a ``LogSoftmaxWrapper`` around one),
    recomputing the cached trigonometric terms that its ``__init__`` derives from it."""
    aam = loss.loss_fn if isinstance(loss, LogSoftmaxWrapper) else loss
    if not isinstance(aam, AdditiveAngularMargin):
        raise TypeError(f"Expected AdditiveAngularMargin, got {type(aam).__name__}")
    aam.margin = margin
    aam.cos_m = math.cos(margin)
    aam.sin_m = math.sin(margin)
    aam.th = math.cos(math.pi - margin)
    aam.mm = math.sin(math.pi - margin) * margin


class MarginScheduler(RunLength):
    """Margin ``initial`` for the hold phase, then a linear ramp to ``final``, then ``final``.
    Each phase is given in optimizer steps (``hold_steps``, ``ramp_steps``) or as a fraction of the
    run (``hold_fraction``, ``ramp_fraction``, once the run's length is set); a phase given in
    neither way is 0 steps. A pure function of the optimizer step, which the Brain checkpoints,
    so a resumed run continues the schedule where it stopped.

    Arguments
    ---------
    final : float
        Target margin (ArcFace m, e.g. 0.3).
    hold_steps, hold_fraction : int or float, optional
        Length of the phase at the initial margin.
    ramp_steps, ramp_fraction : int or float, optional
        Length of the linear increase (0: jump).
    initial : float
        Margin at the start (0 as WeSpeaker).
    total_steps : int, optional
        The run's length; ``None``: set by the training script.
    """

    def __init__(
        self,
        final,
        hold_steps=None,
        ramp_steps=None,
        initial=0.0,
        hold_fraction=None,
        ramp_fraction=None,
        total_steps=None,
    ):
        super().__init__(total_steps)
        self.final = final
        self.initial = initial
        self._hold = (hold_steps, None if hold_steps is not None else hold_fraction)
        self._ramp = (ramp_steps, None if ramp_steps is not None else ramp_fraction)

    def _phase(self, name, phase):
        steps, fraction = phase
        if steps is None and fraction is None:
            return 0
        return self.steps(name, steps, fraction)

    @property
    def hold_steps(self):
        """Steps at the initial margin."""
        return self._phase("margin hold", self._hold)

    @property
    def ramp_steps(self):
        """Steps of the linear increase."""
        return self._phase("margin ramp", self._ramp)

    def value(self, step):
        """The margin at a given optimizer step."""
        hold, ramp = self.hold_steps, self.ramp_steps
        if step < hold:
            return self.initial
        if ramp <= 0 or step >= hold + ramp:
            return self.final
        frac = (step - hold) / ramp
        return self.initial + frac * (self.final - self.initial)

    def __call__(self, loss, step):
        """Applies the margin for ``step`` to ``loss``; returns it."""
        margin = self.value(step)
        set_aam_margin(loss, margin)
        return margin

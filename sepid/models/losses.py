"""Loss helpers: the ArcFace margin schedule.

From scratch, a full angular margin at step one makes a small model worse on unseen speakers;
WeSpeaker (``wespeaker/utils/schedulers.py: MarginScheduler``) trains with margin 0 first and then
raises it to its final value. :class:`MarginScheduler` does the same, by optimizer step.
"""

import math

from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper


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


class MarginScheduler:
    """Margin ``initial`` for ``hold_steps`` optimizer steps, then a linear ramp to ``final``
    over ``ramp_steps`` steps, then ``final``. A pure function of the optimizer step, which the Brain
    checkpoints, so a resumed run continues the schedule where it stopped.

    Arguments
    ---------
    final : float
        Target margin (ArcFace m, e.g. 0.3).
    hold_steps : int
        Steps at the initial margin.
    ramp_steps : int
        Steps of the linear increase (0: jump).
    initial : float
        Margin at the start (0 as WeSpeaker).
    """

    def __init__(self, final, hold_steps=0, ramp_steps=0, initial=0.0):
        self.final = final
        self.hold_steps = hold_steps
        self.ramp_steps = ramp_steps
        self.initial = initial

    def value(self, step):
        """The margin at a given optimizer step."""
        if step < self.hold_steps:
            return self.initial
        if self.ramp_steps <= 0 or step >= self.hold_steps + self.ramp_steps:
            return self.final
        frac = (step - self.hold_steps) / self.ramp_steps
        return self.initial + frac * (self.final - self.initial)

    def __call__(self, loss, step):
        """Applies the margin for ``step`` to ``loss``; returns it."""
        margin = self.value(step)
        set_aam_margin(loss, margin)
        return margin

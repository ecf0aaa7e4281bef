"""Schedules set in steps or in fractions of the run.

A schedule written in optimizer steps (warm up for 500 steps, hold the margin for 1000) must be
rescaled by hand for every other corpus size, batch size or number of epochs. The schedules here
take each length either in steps or as a fraction of the run; the run's length (its total number
of optimizer steps) is given by the training script once it knows the data
(:func:`optimizer_steps_per_epoch` x epochs), through :meth:`RunLength.set_total_steps`.

Each schedule is a pure function of the optimizer step (which SpeechBrain's Brain checkpoints),
so a resumed run continues exactly where it stopped, with nothing else to save.
"""

import math


def optimizer_steps_per_epoch(
    n_items, batch_size, drop_last=False, grad_accumulation=1, world_size=1
):
    """Optimizer steps in one epoch of ``n_items`` training items: batches per process (each
    of ``world_size`` processes sees its share under DDP) divided by the gradient accumulation
    factor (SpeechBrain steps every ``grad_accumulation`` batches, and on the last one)."""
    if n_items <= 0 or batch_size <= 0:
        raise ValueError(f"n_items={n_items} and batch_size={batch_size} must be positive.")
    per_process = math.ceil(n_items / max(world_size, 1))
    batches = per_process // batch_size if drop_last else math.ceil(per_process / batch_size)
    return max(1, math.ceil(batches / max(grad_accumulation, 1)))


class RunLength:
    """Converts lengths given in steps or in fractions of the run into steps.

    Arguments
    ---------
    total_steps : int, optional
        The run's length in optimizer steps; ``None`` until :meth:`set_total_steps` (needed only
        by lengths given as fractions).
    """

    def __init__(self, total_steps=None):
        self.total_steps = total_steps

    def set_total_steps(self, total_steps):
        """Sets the run's length (optimizer steps), e.g. epochs x steps per epoch."""
        if total_steps is not None and int(total_steps) <= 0:
            raise ValueError(f"total_steps={total_steps} must be positive.")
        self.total_steps = None if total_steps is None else int(total_steps)

    def steps(self, name, steps=None, fraction=None):
        """``steps`` when given, else ``round(fraction * total_steps)``; exactly one of the two."""
        if (steps is None) == (fraction is None):
            raise ValueError(
                f"Give {name} either in steps or as a fraction of the run, not "
                f"{'both' if steps is not None else 'neither'} (steps={steps}, "
                f"fraction={fraction})."
            )
        if steps is not None:
            if steps < 0:
                raise ValueError(f"{name} steps={steps} must be >= 0.")
            return int(steps)
        if not 0 <= fraction <= 1:
            raise ValueError(f"{name} fraction={fraction} must be in [0, 1].")
        if self.total_steps is None:
            raise ValueError(
                f"{name} is a fraction of the run ({fraction}) but the run's length is unknown: "
                "the training script sets it (set_total_steps) before training, or give "
                "total_steps in the YAML."
            )
        return int(round(fraction * self.total_steps))


class WarmupExpDecay(RunLength):
    """Learning rate: linear warm-up to ``lr``, then exponential decay to ``lr * decay_factor``
    at the end of the run (and held there after it).

    ``value(step)`` is the rate of the optimizer step ``step`` (0-based): ``lr * (step + 1) /
    warmup`` during warm-up (the first step does not run at rate 0), then
    ``lr * decay_factor ** ((step - warmup) / (total - warmup))``.

    Arguments
    ---------
    lr : float
        Peak learning rate.
    decay_factor : float
        Final rate relative to ``lr``.
    warmup_steps, warmup_fraction : int or float, optional
        Warm-up length in steps, or as a fraction of the run (steps win when both are given).
    total_steps : int, optional
        The run's length; ``None``: set by the training script (epochs x steps per epoch).
    """

    def __init__(
        self, lr, decay_factor=0.05, warmup_steps=None, warmup_fraction=None, total_steps=None
    ):
        super().__init__(total_steps)
        if not 0 < decay_factor <= 1:
            raise ValueError(f"decay_factor={decay_factor} must be in (0, 1].")
        self.lr = lr
        self.decay_factor = decay_factor
        self.warmup_steps = warmup_steps
        self.warmup_fraction = None if warmup_steps is not None else warmup_fraction
        if warmup_steps is not None:
            self.steps("warm-up", warmup_steps)  # checked now, not at the first step
        elif warmup_fraction is None:
            raise ValueError("Give the warm-up in steps (warmup_steps) or as warmup_fraction.")

    @property
    def warmup_length(self):
        """Warm-up length in optimizer steps."""
        return self.steps("warm-up", self.warmup_steps, self.warmup_fraction)

    def value(self, step):
        """The learning rate of optimizer step ``step``."""
        warmup = self.warmup_length
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if self.total_steps is None:
            raise ValueError("The run's length is unknown: call set_total_steps first.")
        decay = max(self.total_steps - warmup, 1)
        return self.lr * self.decay_factor ** (min(step - warmup, decay) / decay)

    def __call__(self, optimizer, step):
        """Sets the rate of step ``step`` on every parameter group of ``optimizer``; returns it."""
        lr = self.value(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

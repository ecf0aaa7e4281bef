"""The one training-loop safety net every recipe Brain inherits: non-finite steps are skipped,
non-finite models are never checkpointed.

SpeechBrain 1.1.2's ``Brain.check_loss_isfinite`` only *counts* a non-finite loss against
``nonfinite_patience``; ``fit_batch`` still calls ``backward()`` and ``optimizers_step()``, so one
NaN batch turns every trained weight into NaN. Its ``skip_nonfinite_grads`` run option zeroes the
non-finite gradients one tensor at a time, so the optimizer still steps (weight decay, momentum)
on a partial update. And its loss averaging drops non-finite values, so a validation stage whose
every batch is NaN reads as "loss 0.00".

What is used from SpeechBrain: the count and the patience (``nonfinite_count`` against
``--nonfinite_patience``; past it the Brain stops with its own error), the hooks
``check_loss_isfinite`` / ``optimizers_step`` / ``evaluate_batch``. What is added here, because
SpeechBrain has no option for it: the whole accumulated step is dropped (gradients cleared, no
optimizer or scheduler step) when any of its losses or gradients is non-finite, and
:meth:`FiniteBrain.checkpoint_if_finite` refuses to save a stage whose loss or metrics are
non-finite. With a gradient scaler (fp16) the scaler's own overflow handling is kept, and a
dropped step backs its scale off the same way (scale times the backoff factor, growth tracker
restarted); ``tests/unit/test_precision.py`` runs this path on the CPU.
"""

import math

import speechbrain as sb
import torch
from speechbrain.utils.logger import get_logger

from sepid.training.distributed import global_mean

logger = get_logger(__name__)


def gradients_finite(parameters):
    """True when every gradient among ``parameters`` is finite (one fused norm, no copies)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


class FiniteBrain(sb.Brain):
    """``sb.Brain`` that skips non-finite steps and never checkpoints a non-finite stage.

    Subclasses call ``super().on_stage_start(stage, epoch)`` and, at the end of validation,
    :meth:`checkpoint_if_finite` instead of ``checkpointer.save_and_keep_only``.
    ``self.nonfinite_skipped`` counts the optimizer steps dropped in the current epoch and
    ``self.nonfinite_eval_batches`` the evaluation batches whose loss was not finite.
    """

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.nonfinite_skipped = 0
            self.nonfinite_count = 0  # SpeechBrain's per-epoch count (its fit loop resets it too)
            self._step_is_nonfinite = False
        self.nonfinite_eval_batches = 0

    def check_loss_isfinite(self, loss):
        super().check_loss_isfinite(loss)  # SpeechBrain's count and patience
        if not torch.isfinite(loss):
            # remembered until the (possibly accumulated) optimizer step, which is then dropped
            self._step_is_nonfinite = True

    def optimizers_step(self):
        scaler_on = self.scaler.is_enabled()
        # With a scaler, inf gradients are its overflow signal: it skips them itself.
        bad_grads = not scaler_on and not gradients_finite(self.modules.parameters())
        if not (getattr(self, "_step_is_nonfinite", False) or bad_grads):
            super().optimizers_step()
            return
        self._step_is_nonfinite = False
        self.nonfinite_skipped = getattr(self, "nonfinite_skipped", 0) + 1
        for opt in self.optimizers_dict.values() if self.optimizers_dict else [self.optimizer]:
            opt.zero_grad(set_to_none=True)
        if scaler_on:
            # as the scaler backs off an overflow (torch's _amp_update_scale_): the scale times
            # the backoff factor and the growth tracker restarted, through its public state dict
            # (update(new_scale) sets the scale only: the next good step could grow it back)
            state = self.scaler.state_dict()
            state["scale"] *= state["backoff_factor"]
            state["_growth_tracker"] = 0
            self.scaler.load_state_dict(state)
        logger.warning(
            "Non-finite %s at optimizer step %d: step skipped, weights unchanged "
            "(%d skipped this epoch).",
            "gradients" if bad_grads else "loss",
            self.optimizer_step,
            self.nonfinite_skipped,
        )

    def evaluate_batch(self, batch, stage):
        loss = super().evaluate_batch(batch, stage)
        if not torch.isfinite(loss):
            self.nonfinite_eval_batches += 1
        return loss

    def stage_is_finite(self, stage_loss, stats):
        """False when any evaluation batch or any number in ``stats`` was not finite
        (SpeechBrain's running average silently drops non-finite losses)."""
        values = [stage_loss, *stats.values()]
        # the same decision on every rank (each saw its own batches)
        any_bad = global_mean(self.nonfinite_eval_batches, 1) > 0
        return not any_bad and all(
            math.isfinite(float(v)) for v in values if isinstance(v, int | float | torch.Tensor)
        )

    def checkpoint_if_finite(self, stage_loss, stats, **save_kwargs):
        """``checkpointer.save_and_keep_only(**save_kwargs)`` unless the stage is non-finite, in
        which case nothing is saved (the last good checkpoint stays the one a rerun resumes) and
        the reason is logged. Returns whether it saved."""
        if not self.stage_is_finite(stage_loss, stats):
            logger.error(
                "Validation is not finite (loss %s, %d non-finite batches, stats %s): no "
                "checkpoint saved for this epoch; a rerun resumes from the last finite one.",
                stage_loss,
                self.nonfinite_eval_batches,
                stats,
            )
            return False
        self.checkpointer.save_and_keep_only(**save_kwargs)
        return True


def check_trainable_data(n_classes, n_train_items, loader_options, where):
    """Raises ``ValueError`` before training when the data cannot train a classifier: fewer than
    two classes (a one-class softmax has loss 0 and error 0 whatever the model does) or no full
    batch per epoch (``drop_last`` with fewer items than ``batch_size``)."""
    if n_classes < 2:
        raise ValueError(
            f"{where} has {n_classes} speaker(s): speaker classification needs at least 2. "
            "Select more speakers (--speakers / --train_speakers)."
        )
    batch_size = loader_options.get("batch_size", 1)
    n_batches = (
        n_train_items // batch_size
        if loader_options.get("drop_last", False)
        else math.ceil(n_train_items / batch_size)
    )
    if n_batches == 0:
        raise ValueError(
            f"{where} gives {n_train_items} training items, fewer than batch_size {batch_size} "
            "(with drop_last): no batch would train. Lower --batch_size or add data."
        )

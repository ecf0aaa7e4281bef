"""``--precision=fp16`` through the Brain's gradient scaler, exercised on the CPU.

SpeechBrain 1.1.2's ``Brain.__init__`` refuses fp16 on the CPU and enables its ``GradScaler`` on
CUDA only, so on a CUDA machine ``--precision=fp16`` gives ``self.scaler = torch.GradScaler(
device, enabled=True)`` and ``self.training_ctx = TorchAutocast(device_type, dtype=float16)``.
Here a ``FiniteBrain`` is built on the CPU and given exactly those two objects for the CPU
(PyTorch 2.9 runs float16 autocast and an enabled ``GradScaler("cpu")`` there), so SpeechBrain's
own ``fit_batch`` / ``optimizers_step`` and ``FiniteBrain``'s overrides run their scaler path:
the forward in float16, the loss scaled, the gradients unscaled before clipping and the step, an
fp16 overflow skipped by the scaler (scale backed off), a non-finite loss skipped by
``FiniteBrain`` with the scaler's scale and growth tracker reset as the scaler itself does.
"""

import pytest
import speechbrain as sb
import torch
from speechbrain.utils.autocast import TorchAutocast

from sepid.training.brain import FiniteBrain

INIT_SCALE = 2.0**10
LR = 0.1


class SpyScaler(torch.GradScaler):
    """An enabled CPU ``GradScaler`` that records which of its methods the Brain calls."""

    def __init__(self, growth_interval):
        super().__init__("cpu", init_scale=INIT_SCALE, growth_interval=growth_interval)
        self.calls = []

    def scale(self, outputs):
        self.calls.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):
        self.calls.append("unscale_")
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls.append("update")
        return super().update(new_scale)


class LinearBrain(FiniteBrain):
    """A linear regression whose forward dtype is recorded (float16 under fp16 autocast)."""

    def compute_forward(self, batch, stage):
        predictions = self.modules.model(batch[0].to(self.device))
        self.forward_dtype = predictions.dtype
        return predictions

    def compute_objectives(self, predictions, batch, stage):
        return ((predictions.float() - batch[1].to(self.device)) ** 2).mean()


def fp16_brain(growth_interval=1, **run_opts):
    """A CPU FiniteBrain with what ``--precision=fp16`` gives it on CUDA, for the CPU."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    brain = LinearBrain(
        modules={"model": model},
        opt_class=lambda params: torch.optim.SGD(params, lr=LR),
        run_opts={"noprogressbar": True, "device": "cpu", **run_opts},
    )
    assert not brain.scaler.is_enabled()  # SpeechBrain enables it on CUDA only
    brain.precision = "fp16"
    brain.scaler = SpyScaler(growth_interval)
    brain.training_ctx = TorchAutocast(device_type="cpu", dtype=torch.float16)
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    return brain


def batch(value=1.0):
    """Inputs all ``value`` (300 overflows the float16 weight gradient at scale 2**10; NaN makes
    the loss NaN) and zero targets."""
    return torch.full((4, 3), value), torch.zeros(4, 1)


def weights(brain):
    return {k: v.clone() for k, v in brain.modules.state_dict().items()}


def reference_step(brain, data):
    """The weights after one plain SGD step on the same float16 forward, without a scaler."""
    model = torch.nn.Linear(3, 1)
    model.load_state_dict(brain.modules.model.state_dict())
    with torch.autocast("cpu", dtype=torch.float16):
        loss = ((model(data[0]).float() - data[1]) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    return {f"model.{k}": v for k, v in model.state_dict().items()}


def test_a_finite_step_goes_through_the_scaler():
    brain = fp16_brain()
    data = batch()
    expected = reference_step(brain, data)
    loss = brain.fit_batch(data)
    assert torch.isfinite(loss)
    assert brain.forward_dtype == torch.float16  # autocast really ran the forward in fp16
    assert brain.scaler.calls == ["scale", "unscale_", "step", "update"]
    after = weights(brain)
    # unscaled before the step: the update is the unscaled SGD step, not 2**10 times it
    for key, value in expected.items():
        torch.testing.assert_close(after[key], value, rtol=1e-3, atol=1e-4)
    assert brain.optimizer_step == 1 and brain.nonfinite_skipped == 0
    assert brain.scaler.get_scale() == 2 * INIT_SCALE  # no overflow: grows (growth_interval 1)


def test_an_fp16_overflow_is_skipped_by_the_scaler():
    brain = fp16_brain()
    before = weights(brain)
    loss = brain.fit_batch(batch(300.0))
    assert torch.isfinite(loss)  # the loss is fine: only the float16 gradients overflow
    assert brain.scaler.calls == ["scale", "unscale_", "step", "update"]
    assert all(torch.equal(v, before[k]) for k, v in weights(brain).items())
    assert brain.scaler.get_scale() == INIT_SCALE * brain.scaler.get_backoff_factor()
    # the scaler's own overflow handling, not FiniteBrain's non-finite skip
    assert brain.nonfinite_skipped == 0 and brain.nonfinite_count == 0
    brain.fit_batch(batch())  # and training goes on at the lower scale
    assert not torch.equal(weights(brain)["model.weight"], before["model.weight"])


def test_a_non_finite_loss_is_skipped_with_the_scaler_on():
    brain = fp16_brain(growth_interval=2, nonfinite_patience=1)
    brain.fit_batch(batch())  # growth tracker 1 of 2
    before = weights(brain)
    brain.scaler.calls.clear()
    loss = brain.fit_batch(batch(float("nan")))
    assert not torch.isfinite(loss)
    assert brain.scaler.calls[0] == "scale" and "step" not in brain.scaler.calls
    assert all(torch.equal(v, before[k]) for k, v in weights(brain).items())
    assert all(p.grad is None for p in brain.modules.parameters())
    assert brain.nonfinite_skipped == 1 and brain.nonfinite_count == 1  # SpeechBrain's count
    assert brain.optimizer_step == 1
    # backed off as the scaler backs off an overflow: scale halved, growth tracker restarted,
    # so the next good step does not grow it back at once
    assert brain.scaler.get_scale() == INIT_SCALE * brain.scaler.get_backoff_factor()
    brain.fit_batch(batch())
    assert brain.scaler.get_scale() == INIT_SCALE * brain.scaler.get_backoff_factor()
    assert brain.optimizer_step == 2
    with pytest.raises(ValueError, match="patience is exhausted"):  # SpeechBrain's patience
        brain.fit_batch(batch(float("nan")))

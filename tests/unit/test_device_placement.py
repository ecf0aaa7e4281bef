"""GPU readiness without a GPU: one training step of each recipe Brain runs with its modules and
data on PyTorch's ``meta`` device, under a dispatch mode that fails on any operation mixing a
``meta`` tensor with a tensor on another device. A tensor a recipe creates on the CPU (a
``torch.tensor(...)`` without ``device=self.device``) meets the model's tensors somewhere, and
that operation fails here as it would on a GPU (``meta`` kernels alone do not check every op:
``gather`` with a CPU index passes, hence the mode)."""

import importlib.util
from pathlib import Path

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parents[2]


TRANSFERS = {  # moving a tensor to the device (batch.to(self.device)) is what should happen
    torch.ops.aten._to_copy.default,
    torch.ops.aten.copy_.default,
    torch.ops.aten.lift_fresh.default,
}


class OneDeviceMode(TorchDispatchMode):
    """Raises when an op other than a device transfer mixes a tensor on ``device`` with a
    non-scalar tensor elsewhere (what fails on a GPU). Host-only ops (a random index drawn on
    the CPU) are fine, as they are on a GPU."""

    def __init__(self, device="meta"):
        super().__init__()
        self.device = device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in TRANSFERS:
            tensors = [t for t in tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
            on_device = any(t.device.type == self.device for t in tensors)
            for t in tensors:
                if on_device and t.device.type != self.device and t.dim() > 0:
                    raise RuntimeError(
                        f"{func} got a tensor on {t.device} (shape {tuple(t.shape)}) with "
                        f"tensors on {self.device}"
                    )
        return func(*args, **(kwargs or {}))


def test_the_mode_catches_what_meta_kernels_miss():
    x = torch.randn(1, 3, device="meta")
    torch.gather(x, 1, torch.tensor([[0]]))  # meta alone lets this through
    with pytest.raises(RuntimeError, match="got a tensor on cpu"), OneDeviceMode():
        torch.gather(x, 1, torch.tensor([[0]]))


def load_recipe(path, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speaker_training_step_follows_the_device(tmp_path, speaker_recipe):
    recipe = load_recipe("recipes/speaker/train.py", "speaker_train")
    hparams = speaker_recipe.load(f"--output_folder={tmp_path}", "--n_speakers=3")
    brain = recipe.SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": "meta", "noprogressbar": True},
    )
    assert {p.device.type for p in brain.modules.parameters()} == {"meta"}
    batch = PaddedBatch(
        [
            {"id": str(i), "sig": torch.randn(16000), "spk_id_encoded": torch.LongTensor([i])}
            for i in range(3)
        ]
    )
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    with OneDeviceMode():
        predictions = brain.compute_forward(batch, sb.Stage.TRAIN)  # augmentation included
        loss = brain.compute_objectives(predictions, batch, sb.Stage.TRAIN)
        loss.backward()
    assert loss.device.type == "meta"
    assert all(
        p.grad is not None and p.grad.device.type == "meta"
        for p in brain.modules.parameters()
        if p.requires_grad
    )

"""LoRA as a weight parametrization, so it acts wherever the weight is read.

Hugging Face's ``WavLMAttention`` hands ``q_proj/k_proj/v_proj/out_proj.weight`` straight to
``F.multi_head_attention_forward``: a module wrapper around those linears (peft's ``LoraLayer``,
SpeechBrain's ``AdaptedModel``) is never called, so its output is unchanged and it gets no
gradient. A ``torch.nn.utils.parametrize`` parametrization replaces the *weight* itself
(``W + B A * alpha / r``), which every reader of ``module.weight`` sees, the fused attention
call included. The same mechanism serves the feed-forward linears, so there is one LoRA code path,
one export format and one test for all targets.

Reference: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
"""

import contextlib
import logging
import math

import torch
from torch import nn
from torch.nn.utils import parametrize

logger = logging.getLogger(__name__)


class LoRAParametrization(nn.Module):
    """``W -> W + dropout(B) A * alpha / r`` with ``B`` initialised to zero (identity at start).

    ``dropout`` here is DropConnect on the rows of the low-rank update (the input-dropout form of
    LoRA needs the layer's input, which a weight parametrization never sees).

    Arguments
    ---------
    out_features, in_features : int
        Shape of the weight being adapted.
    rank : int
        LoRA rank r.
    alpha : float
        LoRA scaling numerator; the update is multiplied by ``alpha / rank``.
    dropout : float
        DropConnect probability on the update during training.
    """

    def __init__(self, out_features, in_features, rank=8, alpha=16.0, dropout=0.0):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True

    def delta(self):
        """The low-rank update ``B A * alpha / r``."""
        return (self.dropout(self.lora_B) @ self.lora_A) * self.scaling

    def forward(self, weight):
        if not self.enabled:
            return weight
        return weight + self.delta().to(weight.dtype)


def add_lora(model, target_modules, rank=8, alpha=16.0, dropout=0.0, layer_filter=None):
    """Parametrizes the weight of every ``nn.Linear`` whose name ends with a target.

    Arguments
    ---------
    model : nn.Module
        The model to adapt in place (its own parameters are left as they are; freeze them first).
    target_modules : list of str
        Name suffixes, e.g. ``["q_proj", "k_proj", "v_proj", "out_proj"]``.
    rank, alpha, dropout : see ``LoRAParametrization``.
    layer_filter : callable, optional
        ``f(name) -> bool`` to restrict which matching modules are adapted.

    Returns
    -------
    list of str
        Names of the adapted modules.
    """
    adapted = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if not any(name == t or name.endswith("." + t) for t in target_modules):
            continue
        if layer_filter is not None and not layer_filter(name):
            continue
        lora = LoRAParametrization(
            module.out_features, module.in_features, rank=rank, alpha=alpha, dropout=dropout
        ).to(module.weight.device)
        parametrize.register_parametrization(module, "weight", lora)
        adapted.append(name)
    if not adapted:
        raise ValueError(
            f"No nn.Linear in the model matches the LoRA targets {list(target_modules)}; "
            "check `lora_targets` in the YAML against the model's module names."
        )
    logger.info("LoRA r=%d alpha=%g on %d linear layers", rank, alpha, len(adapted))
    return adapted


def lora_modules(model):
    """Yields ``(name, LoRAParametrization)`` for every LoRA parametrization in the model."""
    for name, module in model.named_modules():
        if isinstance(module, LoRAParametrization):
            yield name, module


def lora_state_dict(model):
    """Only the LoRA tensors (``lora_A``/``lora_B``), keyed as in ``model.state_dict()``."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A" in k or ".lora_B" in k}


@contextlib.contextmanager
def lora_disabled(model):
    """Within the block the model computes with its base weights only."""
    mods = [m for _, m in lora_modules(model)]
    previous = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m, p in zip(mods, previous, strict=True):
            m.enabled = p


def merge_lora(model):
    """Folds every LoRA update into its base weight, leaving a plain model (for export: no custom
    code needed to load it). In place; returns the model.

    Each LoRA-parametrized linear is *replaced* by a new ``nn.Linear`` holding the merged weight,
    rather than un-parametrized with ``torch.nn.utils.parametrize.remove_parametrizations``: that
    function edits the module's class, which a ``copy.deepcopy`` of the model shares, so merging a
    copy would strip ``weight`` from the original (live) model too."""
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if parametrize.is_parametrized(module, "weight")
        and any(isinstance(p, LoRAParametrization) for p in module.parametrizations.weight)
    ]
    for name, module in targets:
        was_training = module.parametrizations.weight.training
        module.parametrizations.weight.eval()  # no DropConnect in the merged weight
        with torch.no_grad():
            weight = module.weight.detach().clone()
        module.parametrizations.weight.train(was_training)
        merged = nn.Linear(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            merged.weight.copy_(weight)
            if module.bias is not None:
                merged.bias.copy_(module.bias)
        merged.weight.requires_grad_(module.parametrizations.weight.original.requires_grad)
        merged.train(module.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, merged)
    return model

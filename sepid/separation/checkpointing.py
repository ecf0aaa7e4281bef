"""Activation checkpointing for SepFormer's transformer blocks.

SepFormer keeps, for the backward pass, the activations of every layer of its intra- and
inter-chunk transformers: at sepformer-whamr's sizes about 86 % of what a joint training step
holds (issue 23's measurement). :class:`SBTransformerBlock` is SpeechBrain's block with each of its
transformer layers recomputed in the backward pass instead (``torch.utils.checkpoint``,
``use_reentrant=False``): the same outputs and gradients for about a third more compute.

It is a subclass, not a wrapper, so its weights keep SpeechBrain's names (a pretrained
``speechbrain/sepformer-whamr`` ``masknet.ckpt`` loads as before) and it survives the deep copies
``Dual_Path_Model`` makes of its intra and inter models. Non-reentrant checkpointing gives
gradients to weights whose inputs need none (a frozen encoder in front) and restores the RNG state
for dropout in the recomputation; it works under DDP, where the reentrant variant fails.
"""

import torch
from speechbrain.lobes.models import dual_path
from torch.utils.checkpoint import checkpoint


def _layer_output(layer, x):
    return layer(x)[0]


class SBTransformerBlock(dual_path.SBTransformerBlock):
    """SpeechBrain's ``SBTransformerBlock``; with ``activation_checkpointing=True`` each
    transformer layer is recomputed in the backward pass while training (eval and ``no_grad``
    run unchanged).

    Arguments
    ---------
    *args, **kwargs
        Those of ``speechbrain.lobes.models.dual_path.SBTransformerBlock``.
    activation_checkpointing : bool
        Recompute each layer's activations in the backward pass instead of keeping them.

    Example
    -------
    >>> block = SBTransformerBlock(1, 8, 2, d_ffn=16, activation_checkpointing=True)
    >>> block(torch.randn(2, 5, 8)).shape
    torch.Size([2, 5, 8])
    """

    def __init__(self, *args, activation_checkpointing=False, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(activation_checkpointing, bool):
            raise ValueError(
                f"activation_checkpointing must be True or False, not {activation_checkpointing!r}"
            )
        self.activation_checkpointing = activation_checkpointing
        if activation_checkpointing and (
            self.mdl.layerdrop_prob > 0 or self.mdl.output_hidden_states
        ):
            raise ValueError(
                "activation_checkpointing needs a transformer without layerdrop or hidden-state "
                "outputs (layerdrop_prob: 0, output_hidden_states: False)."
            )

    def forward(self, x):
        """``x`` [batch, time, channels] -> the same shape, as SpeechBrain's block computes it."""
        if not (self.activation_checkpointing and self.training and torch.is_grad_enabled()):
            return super().forward(x)
        if self.use_positional_encoding:
            x = x + self.pos_enc(x)
        # SpeechBrain's TransformerEncoder.forward without masks, layerdrop or hidden states
        for layer in self.mdl.layers:
            x = checkpoint(_layer_output, layer, x, use_reentrant=False)
        return self.mdl.norm(x)

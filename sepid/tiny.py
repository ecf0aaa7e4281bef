"""Tiny randomly initialised models for tests and the offline demo.

No model hub is reachable from CI or the demo machine, so these build a small model from a config,
save it with ``save_pretrained`` and let callers load it through the same ``from_pretrained`` /
``from_hparams`` path that the real ``microsoft/wavlm-base-plus`` takes.
"""

from pathlib import Path

import torch
from transformers import WavLMConfig, WavLMModel

TINY_WAVLM = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32, 32, 32, 32, 32, 32),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    num_buckets=32,
    max_bucket_distance=100,
    feat_extract_norm="group",
    do_stable_layer_norm=False,
)


def save_tiny_wavlm(folder, seed=0, **overrides):
    """Writes a tiny random WavLM (same architecture as WavLM Base+, fewer and narrower layers,
    the same 320x frame rate) to ``folder`` unless it is already there; returns the folder."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    model = WavLMModel(WavLMConfig(**{**TINY_WAVLM, **overrides}))
    model.save_pretrained(folder)
    return folder

"""WavLM + LoRA speaker encoder: the speaker branch of every recipe in this project.

``waveform [B, T] @ 16 kHz -> WavLM (frozen with LoRA on the chosen linears, or fine-tuned whole)
-> hidden states
-> (optional learned weighted sum of layers) -> pooling (mean | attentive statistics)
-> linear projection -> embedding [B, D]``; the ArcFace classifier on top lives in the YAML
(SpeechBrain's cosine ``Classifier`` with ``AdditiveAngularMargin``).

References: Chen et al., "WavLM: Large-Scale Self-Supervised Pre-Training for Full Stack Speech
Processing", IEEE JSTSP 2022; Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019; Okabe et al., "Attentive Statistics Pooling for Deep Speaker Embedding",
Interspeech 2018.
"""

import logging
import warnings

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import WavLMModel
from transformers.models.wavlm.modeling_wavlm import WavLMGroupNormConvLayer

from sepid.speaker.lora import add_lora, lora_disabled

logger = logging.getLogger(__name__)


def _count(params):
    params = list(params)
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def backbone_state(encoder):
    """What trains in a ``WavLMSpeakerEncoder``'s pretrained backbone, in words, read from the
    parameters' ``requires_grad`` (not from the options, so it cannot disagree with them)."""
    base = [(n, p) for n, p in encoder.backbone.named_parameters() if ".lora_" not in n]
    lora = [p for n, p in encoder.backbone.named_parameters() if ".lora_" in n]
    trainable, total = _count(p for _, p in base)
    adapters = f", LoRA adapters: {_count(lora)[0]} trainable" if lora else ""
    if trainable == 0:
        return f"pretrained backbone frozen ({total} parameters){adapters}"
    frozen = sorted({n.split(".")[0] for n, p in base if not p.requires_grad})
    return (
        f"pretrained backbone fine-tuned: {trainable} of {total} parameters train"
        + (f" (frozen: {', '.join(frozen)})" if frozen else "")
        + adapters
    )


def log_trainable_parameters(modules):
    """Logs how many parameters train out of how many and, for each WavLM speaker encoder among
    ``modules`` (a ``ModuleDict``), whether its backbone is frozen; returns ``(trainable, total)``."""
    trainable, total = _count(modules.parameters())
    encoders = [m for m in modules.modules() if isinstance(m, WavLMSpeakerEncoder)]
    logger.info(
        "Trainable parameters: %d of %d (%.2f%%)%s",
        trainable,
        total,
        100.0 * trainable / max(total, 1),
        "".join(f"; {backbone_state(e)}" for e in encoders),
    )
    return trainable, total


def set_classifier_outputs(classifier, n_classes):
    """Gives SpeechBrain's cosine ``Classifier`` ``n_classes`` outputs (fresh Xavier init) when
    the YAML leaves the number of speakers to data prep (``n_speakers: 0``). The object stays the
    same, so the Brain's modules and the Checkpointer keep pointing at it."""
    input_size = classifier.weight.shape[1]
    weight = torch.empty(n_classes, input_size, device=classifier.weight.device)
    nn.init.xavier_uniform_(weight)
    classifier.weight = nn.Parameter(weight)


# >>> speaker model: torch, SpeechBrain and transformers only (pretrained_interfaces/folder.py
# copies this block into the exported speaker model's custom_interface.py, whose imports it uses,
# so an exported model embeds exactly as training and evaluation do)
POOLINGS = ("mean", "attentive")


def check_pooling(pooling):
    """A ``ValueError`` unless ``pooling`` is one of :data:`POOLINGS`."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def masked_mean(frames, frame_lens):
    """Mean over time of ``frames [B, T, C]`` counting only the first ``frame_lens[b]`` frames."""
    steps = torch.arange(frames.shape[1], device=frames.device)
    mask = (steps[None, :] < frame_lens[:, None]).to(frames.dtype).unsqueeze(-1)
    return (frames * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def pool_frames(pool, frames, frame_lens):
    """``frames [B, T, C]`` pooled over each utterance's first ``frame_lens[b]`` frames: mean
    (``pool`` None) or SpeechBrain's attentive statistics pooling. That pooling turns relative
    lengths back into frame counts with ``arange(T) < rel * T``, so ``rel`` is taken half a frame
    short of the count: ``n / T * T`` rounding just above ``n`` would let frame ``n`` in."""
    if pool is None:
        return masked_mean(frames, frame_lens)
    rel = (frame_lens.to(frames.dtype) - 0.5) / frames.shape[1]
    return pool(frames.transpose(1, 2), lengths=rel).squeeze(-1)


class MaskedGroupNormConvLayer(WavLMGroupNormConvLayer):
    """WavLM Base/Base+'s first feature-encoder layer (convolution -> GroupNorm over time ->
    GELU) with each utterance's GroupNorm statistics taken over its own valid frames only, so
    zero padding in a batch does not change them. Same parameters (and state-dict names) as
    ``WavLMGroupNormConvLayer``; ``valid_samples`` (input samples per utterance, set by
    :class:`MaskedWavLMModel` for one call) ``None`` or all full: exactly the stock layer."""

    valid_samples = None

    def forward(self, hidden_states):
        hidden_states = self.conv(hidden_states)
        samples = self.valid_samples
        if samples is None:
            hidden_states = self.layer_norm(hidden_states)
        else:
            hidden_states = self.masked_norm(hidden_states, samples)
        return self.activation(hidden_states)

    def masked_norm(self, hidden_states, samples):
        """The GroupNorm (one group per channel) of ``hidden_states [B, C, T]`` with each row's
        statistics over its first ``conv_out(samples[b])`` frames; the frames after them (which
        no valid output frame depends on) are normalised with the same statistics."""
        stride, kernel = self.conv.stride[0], self.conv.kernel_size[0]
        batch, channels, total = hidden_states.shape
        frames = torch.div(samples - kernel, stride, rounding_mode="floor") + 1
        frames = frames.clamp(min=1, max=total).tolist()
        norm = self.layer_norm
        if torch.is_grad_enabled() and hidden_states.requires_grad:
            # a trained feature encoder: the gradient goes through the statistics too
            rows = [
                F.pad(norm(hidden_states[b : b + 1, :, :n]), (0, total - n))
                for b, n in enumerate(frames)
            ]
            return torch.cat(rows)
        stats = [
            torch.var_mean(hidden_states[b, :, :n], dim=-1, unbiased=False)
            for b, n in enumerate(frames)
        ]
        # one pass over the tensor: batch_norm with given statistics, one "channel" per row and
        # channel (these first-layer features are the largest tensor in WavLM)
        normed = F.batch_norm(
            hidden_states.reshape(1, batch * channels, total),
            torch.cat([m for _, m in stats]),
            torch.cat([v for v, _ in stats]),
            norm.weight.repeat(batch),
            norm.bias.repeat(batch),
            training=False,
            eps=norm.eps,
        )
        return normed.reshape(batch, channels, total)


class MaskedWavLMModel(WavLMModel):
    """Hugging Face's ``WavLMModel`` whose output for a padded batch, given the sample-level
    ``attention_mask``, equals each utterance's output alone on its valid frames.

    For ``feat_extract_norm="layer"`` configs (WavLM Large) Hugging Face's attention mask already
    does that. ``"group"`` configs (Base, Base+) normalise the first convolution's output over
    the whole time axis, padding included; here that layer is a :class:`MaskedGroupNormConvLayer`
    (the same weights load into it). The rest is Hugging Face's own handling of the mask: padded
    frames are zeroed before the convolutional positional embedding (which then sees what it sees
    at the end of an utterance alone: its zero padding), attention ignores padded keys, and the
    relative position bias depends only on distances. Every frame before an utterance's
    ``_get_feat_extract_output_lengths`` is computed from its valid samples only. Without a mask
    (or with an all-ones one) it is the stock model, bit for bit.
    """

    def __init__(self, config):
        super().__init__(config)
        if config.feat_extract_norm == "group":
            layers = self.feature_extractor.conv_layers
            layers[0] = MaskedGroupNormConvLayer(config, layer_id=0)

    def forward(self, input_values, attention_mask=None, **kwargs):
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: the stock computation
        first = self.feature_extractor.conv_layers[0]
        if isinstance(first, MaskedGroupNormConvLayer) and attention_mask is not None:
            first.valid_samples = attention_mask.long().sum(-1)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_MASK_TYPES_WARNING)
                return super().forward(input_values, attention_mask=attention_mask, **kwargs)
        finally:
            if isinstance(first, MaskedGroupNormConvLayer):
                first.valid_samples = None


# torch's note on Hugging Face passing a boolean padding mask beside WavLM's float position bias
# to multi_head_attention_forward (they combine as they should: padded keys get -inf)
_MASK_TYPES_WARNING = "Support for mismatched key_padding_mask and attn_mask"


def min_input_samples(config):
    """The fewest samples that give WavLM one frame (400 at 16 kHz for Base/Base+: 25 ms)."""
    samples = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride, strict=True))):
        samples = (samples - 1) * stride + kernel
    return samples


def sample_mask(wavs, wav_lens):
    """``(samples [B], mask [B, T] or None)`` from SpeechBrain relative lengths; ``mask`` is
    ``None`` when nothing is padded."""
    samples = torch.round(wav_lens * wavs.shape[1]).long()
    # a meta tensor (device-placement tests) has no values to test: taken as unpadded
    if wavs.is_meta or bool((samples >= wavs.shape[1]).all()):
        return samples, None
    return samples, torch.arange(wavs.shape[1], device=wavs.device)[None] < samples[:, None]


class SpeakerEmbeddingMixin:
    """The embedding computation of the training encoder (:class:`WavLMSpeakerEncoder`) and of
    the exported embedder alike, for an ``nn.Module`` holding ``backbone`` (a
    :class:`MaskedWavLMModel`), ``normalize_waveform`` and the head :meth:`add_head` builds."""

    def add_head(self, embedding_dim, pooling, attention_channels, layer_weighting):
        """``layer_weights`` (a softmax-weighted sum of all hidden layers, or ``None`` for the
        last one), ``pool`` (``None`` for the mean, or attentive statistics pooling) and
        ``projection`` to ``embedding_dim``, sized by the backbone's config."""
        hidden = self.backbone.config.hidden_size
        n_states = self.backbone.config.num_hidden_layers + 1
        self.layer_weights = nn.Parameter(torch.zeros(n_states)) if layer_weighting else None
        self.pooling = pooling
        if pooling == "attentive":
            self.pool = AttentiveStatisticsPooling(hidden, attention_channels=attention_channels)
            pooled = 2 * hidden
        else:
            self.pool = None
            pooled = hidden
        self.projection = nn.Linear(pooled, embedding_dim)

    def frame_lengths(self, wavs, wav_lens):
        """Number of valid WavLM frames per utterance, from SpeechBrain relative lengths."""
        samples = torch.round(wav_lens * wavs.shape[1]).long()
        return self.backbone._get_feat_extract_output_lengths(samples).clamp(min=1)

    def hidden_states(self, wavs, wav_lens, all_layers=False):
        """WavLM hidden states ``[B, T', C]`` (last layer) or a tuple of all layers; each
        utterance's valid frames are what it gives alone, whatever the padding in the batch."""
        samples, mask = sample_mask(wavs, wav_lens)
        if self.normalize_waveform:
            valid = torch.arange(wavs.shape[1], device=wavs.device)[None] < samples[:, None]
            n = valid.sum(1, keepdim=True).clamp(min=1)
            mean = (wavs * valid).sum(1, keepdim=True) / n
            var = (((wavs - mean) * valid) ** 2).sum(1, keepdim=True) / n
            wavs = (wavs - mean) / torch.sqrt(var + 1e-7) * valid
        out = self.backbone(wavs, attention_mask=mask, output_hidden_states=all_layers)
        return out.hidden_states if all_layers else out.last_hidden_state

    def pooled_embedding(self, wavs, wav_lens, frame_lens):
        """The embedding ``[B, D]`` of ``wavs`` (``frame_lens``: :meth:`frame_lengths`):
        hidden states (weighted over layers or the last), pooled over each utterance's valid
        frames, projected."""
        if self.layer_weights is not None:
            states = torch.stack(self.hidden_states(wavs, wav_lens, all_layers=True), dim=0)
            weights = torch.softmax(self.layer_weights, dim=0).to(states.dtype)
            frames = (weights[:, None, None, None] * states).sum(0)
        else:
            frames = self.hidden_states(wavs, wav_lens)
        frame_lens = frame_lens.clamp(max=frames.shape[1])
        return self.projection(pool_frames(self.pool, frames, frame_lens))


def chunk_bounds(samples, chunk_samples):
    """Where an utterance of ``samples`` samples is cut: ``[0, c, 2c, ..., samples]``, a final
    chunk shorter than half a chunk merged into the one before it."""
    bounds = list(range(0, samples, chunk_samples))
    if samples - bounds[-1] < chunk_samples // 2 and len(bounds) > 1:
        bounds.pop()
    return bounds + [samples]


def embed_in_chunks(encoder, wavs, wav_lens, chunk_samples, pretrained_only=False):
    """Embeds a padded batch, cutting utterances longer than ``chunk_samples`` into chunks.

    Each utterance is cut where it would be cut alone (:func:`chunk_bounds` of its own length,
    not the batch's), its ``k``-th chunk embedded with the other utterances' ``k``-th chunks, and
    its embedding is the mean of its chunk embeddings weighted by the samples each chunk holds
    (for mean pooling followed by the affine projection this equals the embedding of the whole
    utterance up to WavLM's context at the cut). So an utterance's embedding does not depend on
    the batch it is in.
    """
    extra = {"pretrained_only": True} if pretrained_only else {}  # the encoder's option only
    total = wavs.shape[1]
    samples = torch.round(wav_lens * total).long()
    if chunk_samples is None or int(samples.max()) <= chunk_samples:
        return encoder(wavs, wav_lens, **extra)
    bounds = [chunk_bounds(int(n), chunk_samples) for n in samples.tolist()]
    weighted, weights = 0.0, torch.zeros(wavs.shape[0], 1, device=wavs.device)
    for k in range(max(len(b) for b in bounds) - 1):
        active = torch.tensor([len(b) - 1 > k for b in bounds], device=wavs.device)
        start = k * chunk_samples
        n_in = torch.tensor(
            [b[k + 1] - start if len(b) - 1 > k else 0 for b in bounds], device=wavs.device
        )
        width = int(n_in.max())
        chunk = wavs[active, start : start + width]
        emb = encoder(chunk, n_in[active].float() / width, **extra)
        w = n_in[active].float().unsqueeze(1)
        full = torch.zeros(wavs.shape[0], emb.shape[1], device=wavs.device, dtype=emb.dtype)
        full[active] = emb * w
        weighted = weighted + full
        weights[active] += w
    return weighted / weights


# <<< speaker model


def enable_layer_checkpointing(backbone):
    """Recomputes each of ``backbone``'s transformer layers in the backward pass (transformers'
    own per-layer switch, non-reentrant: LoRA on a frozen backbone still gets its gradient and
    dropout's RNG state is restored). Only the encoder layers: ``gradient_checkpointing_enable``
    would also recompute the feature encoder, whose masked GroupNorm reads the batch's valid
    lengths during the forward call only."""
    for layer in backbone.encoder.layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = _checkpoint_layer


def _checkpoint_layer(function, *args):
    # the recomputation runs in the backward pass, outside MaskedWavLMModel.forward's filter
    def quiet(*inputs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_MASK_TYPES_WARNING)
            return function(*inputs)

    return checkpoint(quiet, *args, use_reentrant=False)


@register_checkpoint_hooks
class WavLMSpeakerEncoder(SpeakerEmbeddingMixin, nn.Module):
    """WavLM (frozen with LoRA adapters, or fine-tuned whole), pooling and a projection to a
    speaker embedding.

    Arguments
    ---------
    source : str
        Hugging Face model id or local folder for ``WavLMModel.from_pretrained``
        (default in the YAMLs: ``microsoft/wavlm-base-plus``).
    embedding_dim : int
        Size of the speaker embedding.
    freeze_backbone : bool
        ``True`` (default): the pretrained WavLM is frozen and only LoRA (if any) and the head
        train. ``False``: every WavLM weight trains too (full fine-tuning; LoRA, if kept, trains
        alongside), and checkpoints then hold the whole backbone.
    freeze_feature_encoder : bool
        With ``freeze_backbone=False``: keep WavLM's convolutional feature encoder frozen (as
        Hugging Face's fine-tuning recipes do); ``False`` trains it as well. Ignored (frozen) when
        the backbone is frozen.
    lora_rank, lora_alpha, lora_dropout : LoRA hyperparameters (``lora_rank: 0`` disables LoRA).
    lora_targets : list of str
        Names of the linears to adapt (attention ``q_proj k_proj v_proj out_proj``; the
        feed-forward ``intermediate_dense output_dense`` work the same way).
    pooling : str
        ``mean`` (as the reference system) or ``attentive`` (attentive statistics pooling).
    layer_weighting : bool
        Learn a softmax-weighted sum of all hidden layers instead of the last one.
    normalize_waveform : bool
        Zero-mean unit-variance each waveform first (WavLM-Large expects it; Base+ was trained
        without it).
    cache_dir : str, optional
        Where ``from_pretrained`` caches downloaded weights.
    activation_checkpointing : bool
        Recompute each WavLM transformer layer in the backward pass instead of keeping its
        activations (training only; the same gradients, less memory, more compute).
    """

    def __init__(
        self,
        source,
        embedding_dim=512,
        lora_rank=8,
        lora_alpha=16.0,
        lora_dropout=0.0,
        lora_targets=("q_proj", "k_proj", "v_proj", "out_proj"),
        pooling="mean",
        attention_channels=128,
        layer_weighting=False,
        normalize_waveform=False,
        cache_dir=None,
        freeze_backbone=True,
        freeze_feature_encoder=True,
        activation_checkpointing=False,
    ):
        super().__init__()
        check_pooling(pooling)
        self.source = str(source)
        self.freeze_backbone = bool(freeze_backbone)
        self.backbone = MaskedWavLMModel.from_pretrained(self.source, cache_dir=cache_dir)
        self.backbone.requires_grad_(not self.freeze_backbone)
        if self.freeze_backbone or freeze_feature_encoder:
            # Also tells HF's feature encoder it is frozen; otherwise it sets requires_grad on its
            # input, which fails when the input comes from another network (the joint recipe).
            self.backbone.freeze_feature_encoder()
        # SpecAugment-style masking inside WavLM is for pre-training, not for embedding.
        self.backbone.config.apply_spec_augment = False
        # ... and so is LayerDrop: the backbone should be the same network in training and
        # evaluation (and under DDP a skipped layer's weights would get no gradient).
        self.backbone.config.layerdrop = 0.0
        self.normalize_waveform = normalize_waveform
        if lora_rank > 0:
            add_lora(
                self.backbone.encoder,
                lora_targets,
                rank=lora_rank,
                alpha=lora_alpha,
                dropout=lora_dropout,
            )
        if activation_checkpointing:
            enable_layer_checkpointing(self.backbone)
        self.add_head(embedding_dim, pooling, attention_channels, layer_weighting)

    def forward(self, wavs, wav_lens=None, pretrained_only=False):
        """Speaker embeddings ``[B, D]``.

        ``pretrained_only=True`` returns the baseline of the reference system instead: the mean of
        the base model's last hidden states (no LoRA, no pooling head, no projection).
        """
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        if wavs.is_meta:  # no values to check (device-placement tests)
            shortest = wavs.shape[1]
        else:
            shortest = int(torch.round(wav_lens * wavs.shape[1]).min()) if wavs.numel() else 0
        need = min_input_samples(self.backbone.config)
        if shortest < need:
            raise ValueError(
                f"An input of {shortest} samples is shorter than one WavLM frame ({need} samples, "
                f"{need / 16000:.3f} s at 16 kHz): leave such utterances out of the manifest."
            )
        frame_lens = self.frame_lengths(wavs, wav_lens)
        if pretrained_only:
            with lora_disabled(self.backbone):
                return masked_mean(self.hidden_states(wavs, wav_lens), frame_lens)
        return self.pooled_embedding(wavs, wav_lens, frame_lens)

    # --- checkpointing: everything that trains, plus the base model id ---------------------------
    def trainable_state_dict(self):
        """The state that training changes: with a frozen backbone, the LoRA tensors and every
        non-backbone tensor; with a fine-tuned one, every tensor (the whole backbone included)."""
        if not self.freeze_backbone:
            return self.state_dict()
        return {
            k: v
            for k, v in self.state_dict().items()
            if not k.startswith("backbone.") or ".lora_A" in k or ".lora_B" in k
        }

    @mark_as_saver
    def _save(self, path):
        torch.save(
            {
                "base_model": self.source,
                "freeze_backbone": self.freeze_backbone,
                "state": self.trainable_state_dict(),
            },
            path,
        )

    @mark_as_loader
    def _load(self, path, end_of_epoch=False, device=None):
        del end_of_epoch
        saved = torch.load(path, map_location=device or "cpu", weights_only=True)
        self.load_trainable(saved, path)

    def load_trainable(self, saved, path="<state>"):
        """Loads a ``{"base_model", "state"}`` dict written by the checkpoint saver."""
        if saved["base_model"] != self.source:
            logger.warning(
                "Checkpoint %s was trained on base model %s; loading it onto %s",
                path,
                saved["base_model"],
                self.source,
            )
        # Checkpoints written before the option existed hold a frozen backbone's state.
        saved_frozen = saved.get("freeze_backbone", True)
        if saved_frozen != self.freeze_backbone:
            raise ValueError(
                f"Checkpoint {path} was trained with freeze_backbone={saved_frozen} but this "
                f"encoder has freeze_backbone={self.freeze_backbone}: "
                + (
                    "its fine-tuned backbone would be replaced by the base model's weights. "
                    if not saved_frozen
                    else "it holds no backbone weights. "
                )
                + f"Pass --freeze_backbone={saved_frozen} (the YAML it was trained with)."
            )
        expected = set(self.trainable_state_dict())
        missing = expected - set(saved["state"])
        unexpected = set(saved["state"]) - expected
        if missing or unexpected:
            raise ValueError(
                f"Checkpoint {path} does not match this encoder's configuration (missing "
                f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}). Use the YAML the "
                "checkpoint was trained with (LoRA rank/targets, pooling, embedding_dim)."
            )
        self.load_state_dict(saved["state"], strict=False)

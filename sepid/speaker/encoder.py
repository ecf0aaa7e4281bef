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

import torch
from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from torch import nn
from transformers import WavLMModel

from sepid.speaker.lora import add_lora, lora_disabled

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "attentive")


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


def masked_mean(frames, frame_lens):
    """Mean over time of ``frames [B, T, C]`` counting only the first ``frame_lens[b]`` frames."""
    steps = torch.arange(frames.shape[1], device=frames.device)
    mask = (steps[None, :] < frame_lens[:, None]).to(frames.dtype).unsqueeze(-1)
    return (frames * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@register_checkpoint_hooks
class WavLMSpeakerEncoder(nn.Module):
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
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.source = str(source)
        self.freeze_backbone = bool(freeze_backbone)
        self.backbone = WavLMModel.from_pretrained(self.source, cache_dir=cache_dir)
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
        """WavLM hidden states ``[B, T', C]`` (last layer) or a tuple of all layers."""
        if self.normalize_waveform:
            samples = torch.round(wav_lens * wavs.shape[1]).long()
            mask = torch.arange(wavs.shape[1], device=wavs.device)[None] < samples[:, None]
            n = mask.sum(1, keepdim=True).clamp(min=1)
            mean = (wavs * mask).sum(1, keepdim=True) / n
            var = (((wavs - mean) * mask) ** 2).sum(1, keepdim=True) / n
            wavs = (wavs - mean) / torch.sqrt(var + 1e-7) * mask
        # WavLM Base/Base+ use group norm in the feature encoder: Hugging Face advises against an
        # attention mask for them; padded frames are excluded at pooling instead.
        out = self.backbone(wavs, output_hidden_states=all_layers)
        return out.hidden_states if all_layers else out.last_hidden_state

    def forward(self, wavs, wav_lens=None, pretrained_only=False):
        """Speaker embeddings ``[B, D]``.

        ``pretrained_only=True`` returns the baseline of the reference system instead: the mean of
        the base model's last hidden states (no LoRA, no pooling head, no projection).
        """
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        frame_lens = self.frame_lengths(wavs, wav_lens)
        if pretrained_only:
            with lora_disabled(self.backbone):
                return masked_mean(self.hidden_states(wavs, wav_lens), frame_lens)
        if self.layer_weights is not None:
            states = torch.stack(self.hidden_states(wavs, wav_lens, all_layers=True), dim=0)
            weights = torch.softmax(self.layer_weights, dim=0).to(states.dtype)
            frames = (weights[:, None, None, None] * states).sum(0)
        else:
            frames = self.hidden_states(wavs, wav_lens)
        frame_lens = frame_lens.clamp(max=frames.shape[1])
        if self.pool is None:
            pooled = masked_mean(frames, frame_lens)
        else:
            rel = frame_lens.to(frames.dtype) / frames.shape[1]
            pooled = self.pool(frames.transpose(1, 2), lengths=rel).squeeze(-1)
        return self.projection(pooled)

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


def embed_in_chunks(encoder, wavs, wav_lens, chunk_samples, pretrained_only=False):
    """Embeds a padded batch, cutting utterances longer than ``chunk_samples`` into chunks.

    Each chunk is embedded with the batch, and an utterance's embedding is the mean of its chunk
    embeddings weighted by the samples each chunk holds (for mean pooling followed by the affine
    projection this equals the embedding of the whole utterance up to WavLM's context at the cut).
    A final chunk shorter than half a chunk is merged into the one before it.
    """
    total = wavs.shape[1]
    if chunk_samples is None or total <= chunk_samples:
        return encoder(wavs, wav_lens, pretrained_only=pretrained_only)
    samples = torch.round(wav_lens * total).long()
    bounds = list(range(0, total, chunk_samples))
    if total - bounds[-1] < chunk_samples // 2 and len(bounds) > 1:
        bounds.pop()
    bounds.append(total)
    weighted, weights = 0.0, torch.zeros(wavs.shape[0], 1, device=wavs.device)
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        n_in = (samples.clamp(max=stop) - start).clamp(min=0)
        active = n_in > 0
        if not active.any():
            break
        chunk = wavs[active, start:stop]
        emb = encoder(chunk, n_in[active].float() / (stop - start), pretrained_only=pretrained_only)
        w = n_in[active].float().unsqueeze(1)
        full = torch.zeros(wavs.shape[0], emb.shape[1], device=wavs.device, dtype=emb.dtype)
        full[active] = emb * w
        weighted = weighted + full
        weights[active] += w
    return weighted / weights

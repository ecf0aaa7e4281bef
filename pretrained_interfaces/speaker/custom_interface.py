"""WavLM + LoRA + ArcFace speaker model: the SpeechBrain pretrained interface.

This file travels with every exported model (``pretrained_interfaces/export.py`` copies it next to
``hyperparams.yaml`` and the weights), so it depends on SpeechBrain, PyTorch and transformers only,
never on this project's ``sepid`` package. Load an exported folder or Hub repo with::

    from speechbrain.inference.interfaces import foreign_class
    spk = foreign_class(source="user/repo", pymodule_file="custom_interface.py",
                        classname="WavLMSpeakerInterface")
    score, same = spk.verify_files("a.wav", "b.wav")

or, with this module imported, ``WavLMSpeakerInterface.from_hparams(source="user/repo")``.

The embedding network (:class:`WavLMSpeakerEmbedder`) computes exactly what the training encoder
(``sepid.speaker.encoder.WavLMSpeakerEncoder``) computes, and :func:`embed_in_chunks` is the
evaluation recipe's chunking (``sepid.speaker.encoder.embed_in_chunks``); the round-trip tests pin
both to the training code. The WavLM backbone is built from its config (no download) and gets its
weights from the ``Pretrainer``: merged LoRA weights (the default export), or the base model's
weights plus the LoRA adapters (``export.py --adapters``).
"""

import contextlib
import functools
import logging
import pickle
import re
import sys
import warnings
from pathlib import Path

import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.interfaces import Pretrained
from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling
from speechbrain.utils.checkpoints import (
    DEFAULT_TRANSFER_HOOKS,
    get_default_hook,
    mark_as_transfer,
    register_checkpoint_hooks,
    torch_parameter_transfer,
)
from speechbrain.utils.parameter_transfer import Pretrainer
from torch import nn
from torch.nn.utils import parametrize
from transformers import WavLMConfig, WavLMModel
from transformers.models.wavlm.modeling_wavlm import WavLMGroupNormConvLayer

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "attentive")
# An input whose every sample lies within this of its mean is digitally silent or constant (DC):
# all zeros once written as 16-bit PCM, the data prep's silence test (sepid.data.audio.SILENT_PEAK).
SILENT_PEAK = 2.0**-16
# what to do about a damaged file of a model folder
DAMAGED_FIX = (
    "the model folder is damaged: download it again, or export it again with "
    "pretrained_interfaces/export.py <training output folder> --out <folder> --overwrite"
)


class LoRAParametrization(nn.Module):
    """``W -> W + B A * alpha / r`` (inference form of ``sepid.speaker.lora``: same tensors, same
    state-dict keys, no dropout)."""

    def __init__(self, out_features, in_features, rank, alpha):
        super().__init__()
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.scaling = alpha / rank

    def forward(self, weight):
        return weight + ((self.lora_B @ self.lora_A) * self.scaling).to(weight.dtype)


def _masked_mean(frames, frame_lens):
    steps = torch.arange(frames.shape[1], device=frames.device)
    mask = (steps[None, :] < frame_lens[:, None]).to(frames.dtype).unsqueeze(-1)
    return (frames * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _pool_frames(pool, frames, frame_lens):
    """Mean or attentive statistics pooling over each utterance's first ``frame_lens[b]``
    frames (relative lengths half a frame short: SpeechBrain keeps ``arange(T) < rel * T``)."""
    if pool is None:
        return _masked_mean(frames, frame_lens)
    rel = (frame_lens.to(frames.dtype) - 0.5) / frames.shape[1]
    return pool(frames.transpose(1, 2), lengths=rel).squeeze(-1)


class MaskedGroupNormConvLayer(WavLMGroupNormConvLayer):
    """WavLM Base/Base+'s first feature-encoder layer with each utterance's GroupNorm statistics
    taken over its own valid frames only (``sepid.speaker.encoder.MaskedGroupNormConvLayer``);
    the same parameters as ``WavLMGroupNormConvLayer``."""

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
    """``WavLMModel`` whose valid frames, given the sample-level ``attention_mask`` of a padded
    batch, are each utterance's frames alone (``sepid.speaker.encoder.MaskedWavLMModel``)."""

    def __init__(self, config):
        super().__init__(config)
        if config.feat_extract_norm == "group":
            layers = self.feature_extractor.conv_layers
            layers[0] = MaskedGroupNormConvLayer(config, layer_id=0)

    def forward(self, input_values, attention_mask=None, **kwargs):
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
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


# torch's note on the boolean padding mask beside WavLM's float position bias (the two combine
# as they should: padded keys get -inf)
_MASK_TYPES_WARNING = "Support for mismatched key_padding_mask and attn_mask"


def min_input_samples(config):
    """The fewest samples that give WavLM one frame (400 for Base/Base+: 25 ms at 16 kHz)."""
    samples = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride, strict=True))):
        samples = (samples - 1) * stride + kernel
    return samples


def check_signal(signal, what, sample_rate, min_samples):
    """Raises a ``ValueError`` naming ``what`` (a file, an input of a batch) when the 1-D
    ``signal`` cannot give a speaker embedding: shorter than ``min_samples``, NaN or infinite
    samples, or digitally silent / constant (no speech: its embedding would still score as
    confidently as speech's)."""
    n = signal.shape[-1]
    if n < min_samples:
        raise ValueError(
            f"{what} is {n} samples ({n / sample_rate:.3f} s) long: the model needs at least "
            f"{min_samples} samples ({min_samples / sample_rate:.3f} s at {sample_rate} Hz), one "
            "WavLM frame. Pass longer audio."
        )
    if not bool(torch.isfinite(signal).all()):
        raise ValueError(f"{what} contains NaN or infinite samples: clean the audio first.")
    if float((signal - signal.mean()).abs().max()) < SILENT_PEAK:
        raise ValueError(
            f"{what} is digitally silent or constant (every sample within 2**-16 of its mean): "
            "there is no speech to embed, and a score against it would mean nothing."
        )


def _sample_mask(wavs, wav_lens):
    samples = torch.round(wav_lens * wavs.shape[1]).long()
    if bool((samples >= wavs.shape[1]).all()):
        return samples, None
    return samples, torch.arange(wavs.shape[1], device=wavs.device)[None] < samples[:, None]


def _load_tensors(path):
    """A state dict from a SpeechBrain ``.ckpt``/``.bin`` (torch) or a ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Weight file {path} not found: the model folder is incomplete; export it again with "
            "pretrained_interfaces/export.py (or check the Hub repo's files)."
        )
    with open(path, "rb") as f:
        head = f.read(9)
    # by content, not name: the Pretrainer links files under its own names (base_model.ckpt)
    # and the Hub cache stores them under their hash; safetensors opens with a JSON header.
    if len(head) == 9 and head[8:9] == b"{":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise ValueError(
                f"{path} is not a readable weight file ({err}): {DAMAGED_FIX}."
            ) from err
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
            # a truncated or empty file: the zip reader's RuntimeError, EOFError, a cut pickle
            raise ValueError(
                f"{path} is not a readable weight file ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else 'empty'}): {DAMAGED_FIX}."
            ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors: {DAMAGED_FIX}.")
    return state


def _check_state(expected, state, path):
    """A ``ValueError`` naming ``path`` unless ``state`` has exactly the keys of ``expected``
    (key -> tensor) with the same shapes."""
    _check_keys(set(expected), set(state), path)
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ValueError(
            f"{path} does not match hyperparams.yaml ({len(wrong)} tensors of another shape, e.g. "
            f"{wrong[:3]} (file vs model)): {DAMAGED_FIX}."
        )


def _load_module_strictly(module, path):
    """Loads a torch module's ``.ckpt``: every key present, none unexpected, same shapes
    (SpeechBrain's own transfer warns per key and keeps random weights)."""
    state = _load_tensors(path)
    _check_state(module.state_dict(), state, path)
    module.load_state_dict(state)


def _load_label_encoder(encoder, path):
    try:
        encoder.load(path)
    except (KeyError, ValueError, SyntaxError) as err:
        # a cut file lacks the trailing "starting_index", or ends inside a line
        raise ValueError(
            f"{path} is not a complete label encoder ({type(err).__name__}: {err}): {DAMAGED_FIX}."
        ) from err


class CheckedPretrainer(Pretrainer):
    """SpeechBrain's ``Pretrainer``, strict: each torch module's file must hold exactly its
    tensors (names and shapes), and a damaged file (truncated, empty, cut) is one ``ValueError``
    naming it and the fix, never a random-weights model or a bare torch error."""

    def _call_load_hooks(self, paramfiles):
        for name, obj in self.loadables.items():
            if name in self.custom_hooks:
                continue
            if get_default_hook(obj, DEFAULT_TRANSFER_HOOKS) is torch_parameter_transfer:
                # a torch module without its own hook (the embedder's is strict already)
                self.custom_hooks[name] = _load_module_strictly
            elif isinstance(obj, CategoricalEncoder):
                self.custom_hooks[name] = _load_label_encoder
        super()._call_load_hooks(paramfiles)


@register_checkpoint_hooks
class WavLMSpeakerEmbedder(nn.Module):
    """WavLM (built from ``wavlm_config``, weights from the Pretrainer), optional LoRA, pooling
    and projection to a speaker embedding.

    Arguments
    ---------
    wavlm_config : dict
        ``WavLMConfig`` keyword arguments (the training backbone's config).
    embedding_dim : int
        Size of the embedding.
    pooling : str
        ``mean`` or ``attentive``.
    attention_channels : int
        Attentive statistics pooling width.
    layer_weighting : bool
        Softmax-weighted sum of all hidden layers instead of the last one.
    normalize_waveform : bool
        Zero-mean unit-variance each waveform first.
    lora : dict, optional
        ``{"rank", "alpha", "targets"}`` when the adapters ship unmerged; ``None`` when the LoRA
        update is merged into the WavLM weights.
    """

    def __init__(
        self,
        wavlm_config,
        embedding_dim,
        pooling="mean",
        attention_channels=128,
        layer_weighting=False,
        normalize_waveform=False,
        lora=None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        config = WavLMConfig(**wavlm_config)
        config.apply_spec_augment = False
        config.layerdrop = 0.0
        self.backbone = MaskedWavLMModel(config)
        self.backbone.requires_grad_(False)
        self.lora = dict(lora) if lora else None
        if self.lora:
            self._add_lora(self.lora["targets"], self.lora["rank"], self.lora["alpha"])
        hidden = config.hidden_size
        n_states = config.num_hidden_layers + 1
        self.layer_weights = nn.Parameter(torch.zeros(n_states)) if layer_weighting else None
        self.normalize_waveform = normalize_waveform
        if pooling == "attentive":
            self.pool = AttentiveStatisticsPooling(hidden, attention_channels=attention_channels)
            pooled = 2 * hidden
        else:
            self.pool = None
            pooled = hidden
        self.projection = nn.Linear(pooled, embedding_dim)

    def _add_lora(self, targets, rank, alpha):
        adapted = 0
        for name, module in self.backbone.encoder.named_modules():
            if isinstance(module, nn.Linear) and any(
                name == t or name.endswith("." + t) for t in targets
            ):
                lora = LoRAParametrization(module.out_features, module.in_features, rank, alpha)
                parametrize.register_parametrization(module, "weight", lora)
                adapted += 1
        if not adapted:
            raise ValueError(f"No linear layer of WavLM matches the LoRA targets {targets}.")

    def frame_lengths(self, wavs, wav_lens):
        samples = torch.round(wav_lens * wavs.shape[1]).long()
        return self.backbone._get_feat_extract_output_lengths(samples).clamp(min=1)

    def hidden_states(self, wavs, wav_lens, all_layers=False):
        samples, mask = _sample_mask(wavs, wav_lens)
        if self.normalize_waveform:
            valid = torch.arange(wavs.shape[1], device=wavs.device)[None] < samples[:, None]
            n = valid.sum(1, keepdim=True).clamp(min=1)
            mean = (wavs * valid).sum(1, keepdim=True) / n
            var = (((wavs - mean) * valid) ** 2).sum(1, keepdim=True) / n
            wavs = (wavs - mean) / torch.sqrt(var + 1e-7) * valid
        out = self.backbone(wavs, attention_mask=mask, output_hidden_states=all_layers)
        return out.hidden_states if all_layers else out.last_hidden_state

    def forward(self, wavs, wav_lens=None):
        """Speaker embeddings ``[B, D]`` (not normalised) of ``wavs [B, T]``."""
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        frame_lens = self.frame_lengths(wavs, wav_lens)
        if self.layer_weights is not None:
            states = torch.stack(self.hidden_states(wavs, wav_lens, all_layers=True), dim=0)
            weights = torch.softmax(self.layer_weights, dim=0).to(states.dtype)
            frames = (weights[:, None, None, None] * states).sum(0)
        else:
            frames = self.hidden_states(wavs, wav_lens)
        frame_lens = frame_lens.clamp(max=frames.shape[1])
        return self.projection(_pool_frames(self.pool, frames, frame_lens))

    def _is_base_key(self, key):
        """True for a tensor of the pretrained WavLM itself (not LoRA, not the head)."""
        return key.startswith("backbone.") and ".lora_A" not in key and ".lora_B" not in key

    @mark_as_transfer
    def _load(self, path):
        """Loads ``embedder.ckpt``: every tensor (merged export) or, with unmerged adapters,
        everything but the base WavLM weights (those come from :class:`BaseWeights`). Strict:
        a file that does not match the configuration in ``hyperparams.yaml`` is an error."""
        state = _load_tensors(path)
        expected = {k for k in self.state_dict() if not (self.lora and self._is_base_key(k))}
        full = self.state_dict()
        _check_state({k: full[k] for k in expected}, state, path)
        self.load_state_dict(state, strict=False)


@register_checkpoint_hooks
class BaseWeights:
    """Loads a pretrained WavLM's own weight file (``model.safetensors`` or ``pytorch_model.bin``
    of a Hugging Face repo or folder) into an embedder whose LoRA adapters ship unmerged."""

    def __init__(self, embedder):
        self.embedder = embedder

    @mark_as_transfer
    def _load(self, path):
        state = _load_tensors(path)
        target = self.embedder.backbone
        parametrized = {
            name for name, m in target.named_modules() if parametrize.is_parametrized(m, "weight")
        }
        renamed = {}
        for key, value in state.items():
            key = key.removeprefix("wavlm.")
            module, _, leaf = key.rpartition(".")
            if module in parametrized and leaf == "weight":
                key = f"{module}.parametrizations.weight.original"
            # checkpoints written before weight_norm became a parametrization
            key = key.replace(".weight_g", ".parametrizations.weight.original0")
            key = key.replace(".weight_v", ".parametrizations.weight.original1")
            renamed[key] = value
        expected = {k for k in target.state_dict() if ".lora_A" not in k and ".lora_B" not in k}
        missing = expected - set(renamed)
        if missing:
            raise ValueError(
                f"Base model weights {path} lack {len(missing)} WavLM tensors (e.g. "
                f"{sorted(missing)[:3]}): the base model is not the one the adapters were "
                "trained on; use the base_weights the model was exported with."
            )
        unused = set(renamed) - expected
        if unused:
            logger.info("Base model weights %s: %d tensors not used", path, len(unused))
        target.load_state_dict({k: renamed[k] for k in expected}, strict=False)


def _check_keys(expected, found, path):
    missing, unexpected = expected - found, found - expected
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match hyperparams.yaml (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}): {DAMAGED_FIX}."
        )


def _chunk_bounds(samples, chunk_samples):
    bounds = list(range(0, samples, chunk_samples))
    if samples - bounds[-1] < chunk_samples // 2 and len(bounds) > 1:
        bounds.pop()
    return bounds + [samples]


def embed_in_chunks(encoder, wavs, wav_lens, chunk_samples):
    """Embeds a padded batch, cutting utterances longer than ``chunk_samples`` where each would be
    cut alone (chunks of ``chunk_samples``, a final one under half a chunk joining the one
    before), and averaging their chunk embeddings weighted by their samples; the same
    computation as the evaluation recipe's."""
    total = wavs.shape[1]
    samples = torch.round(wav_lens * total).long()
    if chunk_samples is None or int(samples.max()) <= chunk_samples:
        return encoder(wavs, wav_lens)
    bounds = [_chunk_bounds(int(n), chunk_samples) for n in samples.tolist()]
    weighted, weights = 0.0, torch.zeros(wavs.shape[0], 1, device=wavs.device)
    for k in range(max(len(b) for b in bounds) - 1):
        active = torch.tensor([len(b) - 1 > k for b in bounds], device=wavs.device)
        start = k * chunk_samples
        n_in = torch.tensor(
            [b[k + 1] - start if len(b) - 1 > k else 0 for b in bounds], device=wavs.device
        )
        width = int(n_in.max())
        chunk = wavs[active, start : start + width]
        emb = encoder(chunk, n_in[active].float() / width)
        w = n_in[active].float().unsqueeze(1)
        full = torch.zeros(wavs.shape[0], emb.shape[1], device=wavs.device, dtype=emb.dtype)
        full[active] = emb * w
        weighted = weighted + full
        weights[active] += w
    return weighted / weights


@functools.lru_cache(maxsize=16)
def _resampler(orig_freq, new_freq):
    logger.info("Resampling audio from %d Hz to %d Hz", orig_freq, new_freq)
    return torchaudio.transforms.Resample(orig_freq=orig_freq, new_freq=new_freq)


@contextlib.contextmanager
def _as_custom_interface(module):
    """``hyperparams.yaml`` names its classes ``custom_interface.X``; while it is read, that name
    is this module (the code the caller chose), then whatever it was before."""
    previous = sys.modules.get("custom_interface")
    sys.modules["custom_interface"] = module
    try:
        yield
    finally:
        if previous is None:
            del sys.modules["custom_interface"]
        else:
            sys.modules["custom_interface"] = previous


def _check_hparams_file(path):
    """A ``ValueError`` naming ``path`` when the interface YAML lacks its top-level ``modules``
    or ``pretrainer`` (a cut or emptied file; SpeechBrain would say ``KeyError: 'pretrainer'``)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    missing = [k for k in ("modules", "pretrainer") if not re.search(rf"^{k}:", text, re.M)]
    if missing:
        raise ValueError(
            f"{path} is incomplete (no top-level {', '.join(missing)}): {DAMAGED_FIX}."
        )


class WavLMSpeakerInterface(Pretrained):
    """Speaker embeddings, verification and identification with a WavLM + LoRA + ArcFace model.

    ``hyperparams.yaml`` provides ``embedder`` and ``classifier`` (modules), ``label_encoder``
    (the training speakers), ``sample_rate``, ``chunk_seconds`` (longer inputs are embedded in
    chunks of that length and averaged, so memory stays bounded) and ``threshold`` (the cosine
    EER threshold measured when the model was evaluated; ``null`` if it never was).
    """

    MODULES_NEEDED = ["embedder", "classifier"]
    HPARAMS_NEEDED = ["sample_rate", "chunk_seconds", "threshold", "label_encoder"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # SpeechBrain declares MODULES_NEEDED but does not check it.
        missing = [m for m in self.MODULES_NEEDED if m not in self.mods]
        if missing:
            raise ValueError(f"hyperparams.yaml declares no module(s) {missing} under `modules:`.")
        n_classes = self.mods.classifier.weight.shape[0]
        self.hparams.label_encoder.expect_len(n_classes)

    @classmethod
    def from_hparams(cls, source, hparams_file="hyperparams.yaml", **kwargs):
        """Loads a model folder or Hub repo (``user/name``) with this class's code."""
        path = Path(str(source)).expanduser()
        if path.is_dir():
            missing = [
                f
                for f in (hparams_file, "embedder.ckpt", "classifier.ckpt", "label_encoder.ckpt")
                if not (path / f).is_file()
            ]
            if missing:
                raise FileNotFoundError(
                    f"{path} is not a complete exported speaker model (missing {missing}); "
                    "export it with pretrained_interfaces/export.py <training output folder> "
                    f"--out {path} --overwrite."
                )
            _check_hparams_file(path / hparams_file)
        elif (
            path.is_absolute() or str(source).startswith((".", "~")) or str(source).count("/") != 1
        ):
            raise FileNotFoundError(
                f"No model folder at {source}, and it is not a Hub repo id (user/name)."
            )
        with _as_custom_interface(sys.modules[cls.__module__]):
            return super().from_hparams(source, hparams_file=hparams_file, **kwargs)

    # ------------------------------------------------------------------------ audio ---
    def read_audio(self, path, sample_rate=None):
        """Mono float32 ``[time]`` at ``sample_rate`` (default: the model's; channels averaged,
        resampled)."""
        path = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"Audio file not found: {path}")
        try:
            data, rate = sf.read(path, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise ValueError(
                f"Cannot read audio file {path}: {str(err).rstrip('.')}. Convert it to wav or "
                f"flac (e.g. `ffmpeg -i {path} out.wav`)."
            ) from err
        if data.shape[0] == 0:
            raise ValueError(f"Audio file {path} is empty (0 samples).")
        signal = torch.from_numpy(data).mean(dim=1)
        if not torch.isfinite(signal).all():
            raise ValueError(f"Audio file {path} contains NaN or infinite samples.")
        sample_rate = int(sample_rate or self.hparams.sample_rate)
        if rate != sample_rate:
            signal = _resampler(int(rate), sample_rate)(signal)
        return signal

    # ------------------------------------------------------------------- embeddings ---
    def check_signal(self, signal, what):
        """A clear ``ValueError`` naming ``what`` for a 1-D ``signal`` at ``sample_rate`` that
        cannot be embedded: shorter than one WavLM frame (:func:`min_input_samples`), NaN or
        infinite samples, digitally silent or constant."""
        config = self.mods.embedder.backbone.config
        check_signal(signal, what, int(self.hparams.sample_rate), min_input_samples(config))

    def encode_batch(self, wavs, wav_lens=None):
        """L2-normalised speaker embeddings ``[B, D]`` of ``wavs [B, T]`` at ``sample_rate``
        (``wav_lens``: SpeechBrain relative lengths of zero-padded inputs, default all 1; each
        input's embedding is the one it gets alone, whatever else is in the batch). An input
        that cannot be embedded (see :meth:`check_signal`) is a ``ValueError``."""
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        wavs = wavs.to(self.device, torch.float32)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=self.device)
        wav_lens = wav_lens.to(self.device)
        samples = torch.round(wav_lens * wavs.shape[1]).long().tolist()
        for i, n in enumerate(samples):
            self.check_signal(wavs[i, :n], f"Input {i} of the batch")
        chunk = int(self.hparams.chunk_seconds * self.hparams.sample_rate)
        with torch.no_grad():
            emb = embed_in_chunks(self.mods.embedder, wavs, wav_lens, chunk)
        return F.normalize(emb.float(), dim=-1)

    def encode_file(self, path):
        """L2-normalised embedding ``[D]`` of an audio file (any rate and channel count)."""
        signal = self.read_audio(path)
        self.check_signal(signal, f"Audio file {path}")
        return self.encode_batch(signal.unsqueeze(0))[0]

    # ----------------------------------------------------------------- verification ---
    # how a model exported without a threshold gets one
    THRESHOLD_HINT = "run recipes/speaker/evaluate.py and export again"

    def _threshold(self, threshold):
        threshold = self.hparams.threshold if threshold is None else threshold
        if threshold is None:
            raise ValueError(
                "This model was exported without a verification threshold (no evaluation "
                f"metrics): pass threshold=..., or {self.THRESHOLD_HINT}."
            )
        return float(threshold)

    def verify_batch(self, wavs1, wavs2, wav_lens1=None, wav_lens2=None, threshold=None):
        """Cosine scores ``[B]`` between the two batches and decisions ``score > threshold``
        (default: the EER threshold stored in ``hyperparams.yaml``)."""
        threshold = self._threshold(threshold)
        scores = (self.encode_batch(wavs1, wav_lens1) * self.encode_batch(wavs2, wav_lens2)).sum(-1)
        return scores, scores > threshold

    def verify_files(self, path_a, path_b, threshold=None):
        """``(score, same_speaker)`` for two audio files: cosine score (float) and decision."""
        threshold = self._threshold(threshold)
        score = float(torch.dot(self.encode_file(path_a), self.encode_file(path_b)))
        return score, score > threshold

    # --------------------------------------------------------------- identification ---
    def classify_batch(self, wavs, wav_lens=None, topk=5):
        """Top-``topk`` training speakers of each utterance: ``(scores [B, k], labels)``, with
        the ArcFace head's cosine scores, best first."""
        emb = self.encode_batch(wavs, wav_lens)
        with torch.no_grad():
            scores = self.mods.classifier(emb.unsqueeze(1)).squeeze(1)
        k = min(topk, scores.shape[-1])
        best, index = scores.topk(k, dim=-1)
        encoder = self.hparams.label_encoder
        labels = [[encoder.decode_ndim(int(i)) for i in row] for row in index]
        return best, labels

    def classify_file(self, path, topk=5):
        """``[(speaker, score), ...]``: the ``topk`` most likely training speakers, best first."""
        signal = self.read_audio(path)
        self.check_signal(signal, f"Audio file {path}")
        scores, labels = self.classify_batch(signal.unsqueeze(0), topk=topk)
        return list(zip(labels[0], scores[0].tolist(), strict=True))

    def forward(self, wavs, wav_lens=None):
        """Embeddings, as ``encode_batch``."""
        return self.encode_batch(wavs, wav_lens)

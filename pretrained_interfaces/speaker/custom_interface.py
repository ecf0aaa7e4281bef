"""WavLM + LoRA + ArcFace speaker model: the SpeechBrain pretrained interface.

This file travels with every exported model (``pretrained_interfaces/export.py`` writes it next to
``hyperparams.yaml`` and the weights) with the ``# >>> speaker model`` block below replaced by the
block of that name in ``sepid/speaker/encoder.py`` (the imports marked ``noqa: F401 (the block's)``
are that code's), so the exported file depends on SpeechBrain, PyTorch and transformers only,
never on this project's ``sepid`` package. Load an exported folder or Hub repo with::

    from speechbrain.inference.interfaces import foreign_class
    spk = foreign_class(source="user/repo", pymodule_file="custom_interface.py",
                        classname="WavLMSpeakerInterface")
    score, same = spk.verify_files("a.wav", "b.wav")

or, with this module imported, ``WavLMSpeakerInterface.from_hparams(source="user/repo")``.

The embedding network (:class:`WavLMSpeakerEmbedder`) and the training encoder
(``sepid.speaker.encoder.WavLMSpeakerEncoder``) share one definition of the masked WavLM, the
pooling head and the chunked embedding (:func:`embed_in_chunks`, the evaluation recipe's), written
once in that block; the round-trip tests pin the exported embeddings to the training code's. The
WavLM backbone is built from its config (no download) and gets its weights from the
``Pretrainer``: merged LoRA weights (the default export), or the base model's weights plus the LoRA
adapters (``export.py --adapters``).
"""

import contextlib
import functools
import logging
import pickle
import re
import sys
import warnings  # noqa: F401 (the block's)
from pathlib import Path

import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.inference.interfaces import Pretrained
from speechbrain.lobes.models.ECAPA_TDNN import (  # noqa: F401 (the block's)
    AttentiveStatisticsPooling,
)
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
from transformers import WavLMConfig, WavLMModel  # noqa: F401 (the block's)
from transformers.models.wavlm.modeling_wavlm import (  # noqa: F401 (the block's)
    WavLMGroupNormConvLayer,
)

# >>> speaker model (export.py inlines sepid/speaker/encoder.py's `# >>> speaker model` block here)
from sepid.speaker.encoder import (  # noqa: F401 (the block's names, as the export inlines them)
    POOLINGS,
    MaskedGroupNormConvLayer,
    MaskedWavLMModel,
    SpeakerEmbeddingMixin,
    check_pooling,
    chunk_bounds,
    embed_in_chunks,
    masked_mean,
    min_input_samples,
    pool_frames,
    sample_mask,
)

# <<< speaker model

logger = logging.getLogger(__name__)

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
class WavLMSpeakerEmbedder(SpeakerEmbeddingMixin, nn.Module):
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
        check_pooling(pooling)
        config = WavLMConfig(**wavlm_config)
        config.apply_spec_augment = False
        config.layerdrop = 0.0
        self.backbone = MaskedWavLMModel(config)
        self.backbone.requires_grad_(False)
        self.lora = dict(lora) if lora else None
        if self.lora:
            self._add_lora(self.lora["targets"], self.lora["rank"], self.lora["alpha"])
        self.normalize_waveform = normalize_waveform
        self.add_head(embedding_dim, pooling, attention_channels, layer_weighting)

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

    def forward(self, wavs, wav_lens=None):
        """Speaker embeddings ``[B, D]`` (not normalised) of ``wavs [B, T]``."""
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        return self.pooled_embedding(wavs, wav_lens, self.frame_lengths(wavs, wav_lens))

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

"""SepFormer + WavLM speaker branch, trained jointly: the SpeechBrain pretrained interface.

Separates a mixture and says, for each separated source, who it is::

    from speechbrain.inference.interfaces import foreign_class
    sep = foreign_class(source="user/repo", pymodule_file="custom_interface.py",
                        classname="SepformerSpeakerInterface")
    for s in sep.separate_file("meeting.wav", save_folder="out/"):
        print(s.path, s.speaker, s.score)
    sep.enrol({"alice": ["alice1.wav", "alice2.wav"], "bob": ["bob.wav"]})  # name your speakers

Mixtures longer than ``separation_chunk_seconds`` (hyperparams.yaml) are separated in chunks that
overlap by ``separation_overlap_seconds``; each chunk's sources are put in the order of the
previous chunk's by their correlation on the overlap and cross-faded there (the separation
evaluation's chunking, ``sepid.separation.separator.separate_in_chunks``), so memory does not grow with the
length of the file. Each source is resampled to the speaker branch's rate in pieces
(:func:`resample_in_pieces`) and embedded in chunks of ``chunk_seconds``.

Every exported folder carries this file with the speaker interface
(``pretrained_interfaces/speaker/custom_interface.py``) and the chunked separation inlined where
the blocks below import them (``export.py`` does that), so the folder depends on SpeechBrain,
PyTorch and transformers only.
The class extends ``WavLMSpeakerInterface``: ``encode_file``, ``verify_files`` and
``classify_file`` use the jointly trained speaker branch.
"""

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch
import torch.nn.functional as F
from speechbrain.inference.separation import SepformerSeparation

# >>> speaker interface (export.py inlines pretrained_interfaces/speaker/custom_interface.py here)
from pretrained_interfaces.speaker.custom_interface import (  # noqa: F401 (names the YAML uses)
    BaseWeights,
    CheckedPretrainer,
    WavLMSpeakerEmbedder,
    WavLMSpeakerInterface,
    _resampler,
    check_signal,
    min_input_samples,
)

# <<< speaker interface
# >>> chunked separation (export.py inlines sepid/separation/separator.py's block here)
from sepid.separation.separator import separate_in_chunks

# <<< chunked separation

logger = logging.getLogger(__name__)

JOINT_FILES = ("encoder.ckpt", "masknet.ckpt", "decoder.ckpt")
UNKNOWN = "unknown"  # the name of an output no enrolled speaker scores enough for


@dataclass
class SeparatedSource:
    """One separated source: its signal ``[time]`` at ``sample_rate``, the speaker the model
    names (an enrolled name after :meth:`SepformerSpeakerInterface.enrol`, or ``"unknown"``
    below its threshold; else a training speaker), the cosine ``score`` of that decision, the L2-normalised ``embedding`` and, when
    written, its ``path``."""

    signal: torch.Tensor
    sample_rate: int
    speaker: str
    score: float
    embedding: torch.Tensor
    path: str = None


def resample_in_pieces(signals, orig_freq, new_freq, piece_samples):
    """``signals [N, T]`` resampled from ``orig_freq`` to ``new_freq`` as the speaker interface's
    resampler does (``torchaudio.transforms.Resample``), but ``piece_samples`` at a time: each
    piece is resampled with the filter's width of real signal on both sides and trimmed, so the
    output is the whole signal's, while the convolution's temporaries (about 15 copies of its
    input for 8 to 16 kHz) stay those of one piece."""
    resampler = _resampler(int(orig_freq), int(new_freq))
    total = signals.shape[1]
    if orig_freq == new_freq or total <= 2 * piece_samples:
        return resampler(signals)
    gcd = math.gcd(int(orig_freq), int(new_freq))
    step, out_step = int(orig_freq) // gcd, int(new_freq) // gcd  # output frames: out_step each
    piece = max(step, piece_samples // step * step)
    context = -(-(resampler.width + step) // step) * step  # >= the filter's reach, whole frames
    length = -(-out_step * total // step)
    out = signals.new_empty(signals.shape[0], length)
    for start in range(0, total, piece):
        stop = min(start + piece, total)
        lo = max(0, start - context)
        part = resampler(signals[:, lo : min(total, stop + context)])
        first = start // step * out_step
        last = length if stop == total else stop // step * out_step
        skip = first - lo // step * out_step
        out[:, first:last] = part[:, skip : skip + last - first]
    return out


def _safe_name(text):
    return re.sub(r"[^\w.-]+", "_", str(text)).strip("._") or "speaker"


class SepformerSpeakerInterface(WavLMSpeakerInterface):
    """Source separation with the speaker of each source.

    ``hyperparams.yaml`` provides the SepFormer (``encoder``, ``masknet``, ``decoder``) at
    ``separator_sample_rate`` with ``num_spks`` outputs, the chunking of long mixtures
    (``separation_chunk_seconds``, ``separation_overlap_seconds``), the speaker branch
    (``embedder``, ``classifier``, ``label_encoder``) at ``sample_rate`` and the default
    ``enrol_threshold``.
    """

    MODULES_NEEDED = ["encoder", "masknet", "decoder", "embedder", "classifier"]
    THRESHOLD_HINT = (
        "export the joint run again with --threshold, or from a speaker source exported after "
        "recipes/speaker/evaluate.py (its threshold is carried over)"
    )
    HPARAMS_NEEDED = WavLMSpeakerInterface.HPARAMS_NEEDED + [
        "separator_sample_rate",
        "num_spks",
        "separation_chunk_seconds",
        "separation_overlap_seconds",
        "enrol_threshold",
    ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.enrolled = None  # (names, centroids [S, D], threshold or None) after enrol()

    @classmethod
    def from_hparams(cls, source, hparams_file="hyperparams.yaml", **kwargs):
        """Loads a model folder or Hub repo (``user/name``) with this class's code."""
        path = Path(str(source)).expanduser()
        if path.is_dir():
            missing = [f for f in JOINT_FILES if not (path / f).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{path} is not a complete exported joint model (missing {missing}); export "
                    "it with pretrained_interfaces/export.py <joint training output folder> "
                    f"--out {path} --overwrite."
                )
        return super().from_hparams(source, hparams_file=hparams_file, **kwargs)

    # -------------------------------------------------------------------- separation ---
    def separate_signals(self, mixtures):
        """The SepFormer's sources ``[B, T, num_spks]`` of ``mixtures [B, T]`` at
        ``separator_sample_rate`` (SpeechBrain's ``SepformerSeparation.separate_batch``)."""
        if mixtures.dim() == 1:
            mixtures = mixtures.unsqueeze(0)
        with torch.no_grad():
            return SepformerSeparation.separate_batch(self, mixtures.float())

    def separate_chunked(self, mixtures):
        """The sources ``[B, T, num_spks]`` of ``mixtures [B, T]``, as :meth:`separate_signals`
        but in chunks of ``separation_chunk_seconds`` overlapping by
        ``separation_overlap_seconds`` (source order aligned between chunks on the overlap): the
        memory of one chunk whatever ``T``. Mixtures no longer than a chunk: one pass, the same
        as :meth:`separate_signals`."""
        if mixtures.dim() == 1:
            mixtures = mixtures.unsqueeze(0)
        rate = int(self.hparams.separator_sample_rate)
        chunk = self.hparams.separation_chunk_seconds
        overlap = self.hparams.separation_overlap_seconds or 0.0
        return separate_in_chunks(
            self.separate_signals,
            mixtures,
            None if chunk is None else int(round(chunk * rate)),
            int(round(overlap * rate)),
        )

    def enrol(self, speakers, threshold=None):
        """Names outputs by your own speakers: ``{name: [audio files]}``; each name's centroid is
        the mean of its files' normalised embeddings. An output whose best cosine score is below
        ``threshold`` (default: ``enrol_threshold`` in hyperparams.yaml; ``None`` there: never)
        is named ``"unknown"``. Replaces any earlier enrolment and returns ``{name: centroid}``;
        ``enrol(None)`` goes back to the training speakers."""
        if speakers is None:
            self.enrolled = None
            return {}
        if not isinstance(speakers, Mapping):
            raise TypeError(
                "enrol() takes a mapping {name: [audio files]}, e.g. "
                f"enrol({{'alice': ['alice1.wav'], 'bob': ['bob.wav']}}), not a "
                f"{type(speakers).__name__}: name each speaker's files."
            )
        if not speakers or any(not files for files in speakers.values()):
            raise ValueError("enrol() takes {name: [audio files]} with at least one file each.")
        if UNKNOWN in speakers:
            raise ValueError(
                f'"{UNKNOWN}" names outputs below the enrolment threshold; enrol that speaker '
                "under another name."
            )
        by_file_name = {_safe_name(UNKNOWN): [UNKNOWN]}
        for name in speakers:
            by_file_name.setdefault(_safe_name(name), []).append(name)
        clashes = [names for names in by_file_name.values() if len(names) > 1]
        if clashes:
            raise ValueError(
                f"Speaker names {' and '.join(repr(str(n)) for n in clashes[0])} give the same "
                f"output file name ({_safe_name(clashes[0][0])!r}: separate_file writes "
                "<file>_<i>_<name>.wav, with characters other than letters, digits, '.', '-' and "
                "'_' replaced): rename one of them."
            )
        if threshold is None:
            threshold = self.hparams.enrol_threshold
        names = sorted(speakers)
        centroids = []
        for name in names:
            files = [speakers[name]] if isinstance(speakers[name], (str, Path)) else speakers[name]
            embs = torch.stack([self.encode_file(f) for f in files])
            centroids.append(F.normalize(embs.mean(0), dim=-1))
        self.enrolled = (names, torch.stack(centroids), threshold)
        logger.info(
            "Enrolled %d speakers: %s (unknown below %s)", len(names), ", ".join(names), threshold
        )
        return dict(zip(names, centroids, strict=True))

    def identify(self, embeddings):
        """``(speakers, scores)`` for normalised ``embeddings [N, D]``: the closest enrolled
        centroid (cosine; ``"unknown"`` when its score is below the enrolment threshold) or,
        without enrolment, the classifier head's top training speaker."""
        if self.enrolled is not None:
            names, centroids, threshold = self.enrolled
            scores = embeddings @ centroids.to(embeddings.device).T
            best, index = scores.max(dim=-1)
            speakers = [
                UNKNOWN if threshold is not None and float(b) < threshold else names[int(i)]
                for b, i in zip(best, index, strict=True)
            ]
            return speakers, best.tolist()
        with torch.no_grad():
            scores = self.mods.classifier(embeddings.unsqueeze(1)).squeeze(1)
        best, index = scores.max(dim=-1)
        encoder = self.hparams.label_encoder
        return [encoder.decode_ndim(int(i)) for i in index], best.tolist()

    def check_mixture(self, signal, what):
        """A clear ``ValueError`` naming ``what`` for a 1-D mixture at ``separator_sample_rate``
        that cannot be separated and identified: too short for one frame of the speaker branch
        once resampled (the minimum is in the message), NaN or infinite samples, digitally
        silent or constant."""
        rate, spk_rate = int(self.hparams.separator_sample_rate), int(self.hparams.sample_rate)
        need = min_input_samples(self.mods.embedder.backbone.config)
        check_signal(signal, what, rate, -(-need * rate // spk_rate))

    def separate_batch(self, mixtures, mix_lens=None):
        """Separates ``mixtures [B, T]`` (at ``separator_sample_rate``; long ones in chunks,
        :meth:`separate_chunked`); for each mixture, the list of its :class:`SeparatedSource`
        (signal, speaker, score, embedding: computed in chunks of ``chunk_seconds``).

        ``mix_lens``: SpeechBrain relative lengths of zero-padded mixtures (default all 1). Each
        mixture then gives what it gives alone: the SepFormer has no padding mask, so mixtures of
        different lengths are separated one at a time (over their own samples; the sources are
        returned that long), and their sources are embedded together with their lengths, which
        the speaker branch masks exactly."""
        if mixtures.dim() == 1:
            mixtures = mixtures.unsqueeze(0)
        total = mixtures.shape[1]
        lengths = [total] * mixtures.shape[0]
        if mix_lens is not None:
            lengths = torch.round(mix_lens.cpu() * total).long().tolist()
        for i, n in enumerate(lengths):
            self.check_mixture(mixtures[i, :n], f"Mixture {i} of the batch")
        if all(n == total for n in lengths):
            per_mixture = list(self.separate_chunked(mixtures).cpu())
        else:
            per_mixture = [
                self.separate_chunked(m[:n].unsqueeze(0)).cpu()[0]
                for m, n in zip(mixtures, lengths, strict=True)
            ]
        rate, spk_rate = int(self.hparams.separator_sample_rate), int(self.hparams.sample_rate)
        piece = int(self.hparams.chunk_seconds * rate)  # embedded in chunks of that length too
        n = per_mixture[0].shape[-1]
        outputs = [resample_in_pieces(sources.T, rate, spk_rate, piece) for sources in per_mixture]
        out_total = max(o.shape[1] for o in outputs)
        flat = torch.zeros(len(outputs) * n, out_total)
        out_lens = torch.empty(len(outputs) * n)
        for b, o in enumerate(outputs):
            flat[b * n : (b + 1) * n, : o.shape[1]] = o
            out_lens[b * n : (b + 1) * n] = o.shape[1] / out_total
        embeddings = self.encode_batch(flat, out_lens)
        speakers, scores = self.identify(embeddings)
        return [
            [
                SeparatedSource(
                    sources[:, i],
                    rate,
                    speakers[b * n + i],
                    scores[b * n + i],
                    embeddings[b * n + i],
                )
                for i in range(n)
            ]
            for b, sources in enumerate(per_mixture)
        ]

    def separate_file(self, path, save_folder=None):
        """Separates an audio file (any rate and channel count: downmixed, resampled to
        ``separator_sample_rate``; longer than ``separation_chunk_seconds``: in chunks, memory
        bounded); with ``save_folder``, writes each source as
        ``<file stem>_<i>_<speaker>.wav`` there and sets its ``path``."""
        mixture = self.read_audio(path, sample_rate=self.hparams.separator_sample_rate)
        self.check_mixture(mixture, f"Audio file {path}")
        sources = self.separate_batch(mixture.unsqueeze(0))[0]
        if save_folder is not None:
            folder = Path(save_folder)
            folder.mkdir(parents=True, exist_ok=True)
            stem = Path(path).stem
            for i, source in enumerate(sources, start=1):
                out = folder / f"{stem}_{i}_{_safe_name(source.speaker)}.wav"
                tmp = out.with_name(f".{out.name}.partial")
                sf.write(tmp, source.signal.numpy(), source.sample_rate, format="WAV")
                tmp.replace(out)
                source.path = str(out)
            logger.info("Wrote %d sources of %s to %s", len(sources), path, folder)
        return sources

    def forward(self, mixtures, mix_lens=None):
        """Separated sources with their speakers, as ``separate_batch``."""
        return self.separate_batch(mixtures, mix_lens)

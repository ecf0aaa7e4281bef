"""Data pipelines shared by the recipes' ``dataio_prep``: SpeechBrain ``DynamicItemDataset`` built
from the CSV manifests of the data prep (schemas in :mod:`sepid.data.schema`), with audio read
through :func:`sepid.data.audio.read_audio` (mono, explicit sample rate, cached resampling, clear
errors), and the speaker label encoder."""

import logging
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder

from sepid.data.audio import audio_info, read_audio
from sepid.data.manifest import read_csv
from sepid.data.schema import UTTERANCE_COLUMNS

logger = logging.getLogger(__name__)

NO_VALIDATION_ROWS = (
    "every training speaker has too few utterances for a validation utterance. Set "
    "valid_segment_seconds (e.g. 2.0) to validate them on held-out segments, or raise "
    "valid_ratio, and rerun (data prep redoes the split)."
)


def load_manifest(
    csv_path,
    data_folder,
    required_columns=UTTERANCE_COLUMNS,
    empty_hint="rerun the data prep that writes it.",
):
    """A ``DynamicItemDataset`` from a manifest, ``$data_root`` replaced by ``data_folder``; the
    columns are checked first so a wrong file fails with its name, not a KeyError later, and an
    empty manifest is an error (``empty_hint``: why it may be empty and the fix)."""
    if not read_csv(csv_path, required_columns):
        raise ValueError(f"Manifest {csv_path} has no rows: {empty_hint}")
    return DynamicItemDataset.from_csv(csv_path, replacements={"data_root": str(data_folder)})


def _segment_frames(wav, start, stop):
    """``(first, last, file_rate)``: the frames of ``wav`` between ``start`` and ``stop`` seconds
    (manifest strings or numbers; the whole file when both are None)."""
    frames, file_rate, _ = audio_info(wav)
    first = 0 if start is None else min(int(round(float(start) * file_rate)), frames)
    last = frames if stop is None else min(int(round(float(stop) * file_rate)), frames)
    return first, max(last, first), file_rate


def random_crop_pipeline(sample_rate, segment_seconds):
    """Audio pipeline ``wav, start, stop -> sig``: a random ``segment_seconds`` crop of the
    row's segment (``start``..``stop`` seconds of the file, see
    :data:`sepid.data.schema.SEGMENT_COLUMNS`), read from
    disk alone (only the crop is decoded); shorter segments are repeated to fill the crop. The
    offset comes from torch's generator, which SpeechBrain seeds and DataLoader workers re-seed
    each."""

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def pipeline(wav, start, stop):
        first, last, file_rate = _segment_frames(wav, start, stop)
        want = int(round(segment_seconds * file_rate))
        if last - first > want:
            offset = first + int(torch.randint(0, last - first - want + 1, ()).item())
            sig = read_audio(wav, sample_rate, start=offset, stop=offset + want)
        else:
            sig = read_audio(wav, sample_rate, start=first, stop=last)
            sig = sig.repeat(int(segment_seconds * sample_rate) // max(sig.shape[0], 1) + 1)
        return sig[: int(round(segment_seconds * sample_rate))]

    return pipeline


def segment_pipeline(sample_rate, max_seconds=None):
    """Audio pipeline ``wav, start, stop -> sig``: the row's segment (``start``..``stop`` seconds
    of the file), or its first ``max_seconds``."""

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def pipeline(wav, start, stop):
        first, last, file_rate = _segment_frames(wav, start, stop)
        if max_seconds is not None:
            last = min(last, first + int(max_seconds * file_rate))
        return read_audio(wav, sample_rate, start=first, stop=last)

    return pipeline


def full_pipeline(sample_rate, max_seconds=None):
    """Audio pipeline ``wav -> sig``: the whole utterance, or its first ``max_seconds``."""

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def pipeline(wav):
        if max_seconds is None:
            return read_audio(wav, sample_rate)
        _, file_rate, _ = audio_info(wav)
        return read_audio(wav, sample_rate, stop=int(max_seconds * file_rate))

    return pipeline


def label_pipeline(label_encoder):
    """``spk_id -> spk_id_encoded`` through a fitted ``CategoricalEncoder``."""

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id", "spk_id_encoded")
    def pipeline(spk_id):
        yield spk_id
        yield torch.LongTensor([label_encoder.encode_label(spk_id)])

    return pipeline


def speaker_label_encoder(path, train_set, valid_set, train_csv, valid_csv):
    """The speaker encoder of a training run: fitted on the speakers of ``train_set`` and saved
    at ``path``, or loaded from ``path`` when an earlier run (resumed) wrote it. Checks that it
    names exactly the speakers of ``train_set`` (else the data prep changed under an existing
    experiment) and every speaker of ``valid_set``; ``train_csv``, ``valid_csv`` name the
    datasets' manifests in the errors."""
    encoder = CategoricalEncoder()
    encoder.load_or_create(path=path, from_didatasets=[train_set], output_key="spk_id")
    speakers = {row["spk_id"] for row in train_set.data.values()}
    if set(encoder.lab2ind) != speakers:
        raise ValueError(
            f"{path} (written by an earlier run) names {len(encoder.lab2ind)} speakers but "
            f"{train_csv} has {len(speakers)} other ones: the data prep changed under an "
            "existing experiment. Use a new --output_folder (or remove the old one)."
        )
    unknown = sorted({row["spk_id"] for row in valid_set.data.values()} - set(encoder.lab2ind))
    if unknown:
        raise ValueError(
            f"Validation manifest {valid_csv} has speakers absent from training "
            f"({unknown[:5]}...): validation must use the training speakers (rerun data prep)."
        )
    return encoder


def load_label_encoder(path):
    """The speaker encoder written by training; ``None`` when there is none yet."""
    if not Path(path).is_file():
        return None
    encoder = CategoricalEncoder()
    encoder.load(path)
    return encoder

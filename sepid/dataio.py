"""Data pipelines shared by the recipes: SpeechBrain ``DynamicItemDataset`` built from the CSV
manifests of ``data_prep/``, with audio read through :func:`sepid.audio.read_audio` (mono, explicit
sample rate, cached resampling, clear errors)."""

import logging
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder

from sepid.audio import audio_info, read_audio
from sepid.manifest import read_csv

logger = logging.getLogger(__name__)

UTTERANCE_COLUMNS = ("ID", "duration", "wav", "spk_id")


def load_manifest(csv_path, data_folder, required_columns=UTTERANCE_COLUMNS):
    """A ``DynamicItemDataset`` from a manifest, ``$data_root`` replaced by ``data_folder``; the
    columns are checked first so a wrong file fails with its name, not a KeyError later, and an
    empty manifest is an error."""
    if not read_csv(csv_path, required_columns):
        raise ValueError(f"Manifest {csv_path} has no rows: rerun the data prep that writes it.")
    return DynamicItemDataset.from_csv(csv_path, replacements={"data_root": str(data_folder)})


def random_crop_pipeline(sample_rate, segment_seconds):
    """Audio pipeline ``wav -> sig``: a random ``segment_seconds`` crop, read from disk alone
    (only the crop is decoded); shorter utterances are repeated to fill the crop. The offset comes
    from torch's generator, which SpeechBrain seeds and DataLoader workers re-seed each."""

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def pipeline(wav):
        frames, file_rate, _ = audio_info(wav)
        want = int(round(segment_seconds * file_rate))
        if frames > want:
            start = int(torch.randint(0, frames - want + 1, ()).item())
            sig = read_audio(wav, sample_rate, start=start, stop=start + want)
        else:
            sig = read_audio(wav, sample_rate)
            sig = sig.repeat(int(segment_seconds * sample_rate) // sig.shape[0] + 1)
        return sig[: int(round(segment_seconds * sample_rate))]

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


def speaker_label_encoder(path, datasets):
    """Fits (or loads, when ``path`` exists) the speaker encoder on the given datasets."""
    encoder = CategoricalEncoder()
    encoder.load_or_create(path=path, from_didatasets=datasets, output_key="spk_id")
    return encoder


def load_label_encoder(path):
    """The speaker encoder written by training; ``None`` when there is none yet."""
    if not Path(path).is_file():
        return None
    encoder = CategoricalEncoder()
    encoder.load(path)
    return encoder


def speaker_train_datasets(hparams):
    """Train (random crops) and valid (whole utterances, bounded) datasets with speaker labels.

    Reads ``train_csv``, ``valid_csv``, ``data_folder``, ``sample_rate``, ``segment_seconds``,
    ``max_valid_seconds`` and ``save_folder`` from the hparams.
    """
    train = load_manifest(hparams["train_csv"], hparams["data_folder"])
    valid = load_manifest(hparams["valid_csv"], hparams["data_folder"])
    train.add_dynamic_item(random_crop_pipeline(hparams["sample_rate"], hparams["segment_seconds"]))
    valid.add_dynamic_item(full_pipeline(hparams["sample_rate"], hparams["max_valid_seconds"]))
    encoder_file = f"{hparams['save_folder']}/label_encoder.txt"
    encoder = speaker_label_encoder(encoder_file, [train])
    speakers = {row["spk_id"] for row in train.data.values()}
    if set(encoder.lab2ind) != speakers:
        raise ValueError(
            f"{encoder_file} (written by an earlier run) names {len(encoder.lab2ind)} speakers but "
            f"{hparams['train_csv']} has {len(speakers)} other ones: the data prep changed under "
            "an existing experiment. Use a new --output_folder (or remove the old one)."
        )
    unknown = sorted({row["spk_id"] for row in valid.data.values()} - set(encoder.lab2ind))
    if unknown:
        raise ValueError(
            f"Validation manifest {hparams['valid_csv']} has speakers absent from training "
            f"({unknown[:5]}...): validation must use the training speakers (rerun data prep)."
        )
    for ds in (train, valid):
        ds.add_dynamic_item(label_pipeline(encoder))
        ds.set_output_keys(["id", "sig", "spk_id", "spk_id_encoded"])
    return train, valid, encoder

"""Loading a trained speaker model from a speaker-recipe experiment folder.

``recipes/speaker/train.py`` leaves ``<output_folder>/hyperparams.yaml`` (the YAML with every
override resolved), ``save/label_encoder.txt`` and ``save/CKPT+*`` checkpoints. Other recipes (the
separation evaluation, the joint recipe) load the speaker branch from there through
:func:`load_speaker_experiment`: the same YAML, the same modules, the best checkpoint.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.encoder import CategoricalEncoder

from sepid.dataio import UTTERANCE_COLUMNS, load_label_encoder
from sepid.manifest import read_csv
from sepid.models.speaker import set_classifier_outputs
from sepid.prep import select_speakers

logger = logging.getLogger(__name__)


@dataclass
class SpeakerModel:
    """A speaker encoder with its ArcFace classifier and the speaker label encoder."""

    encoder: object
    classifier: object
    label_encoder: object
    sample_rate: int
    checkpoint: str
    enrol_csv: str  # the experiment's identification enrolment manifest
    data_folder: str  # the corpus its manifests resolve against


def load_speaker_experiment(folder, min_key="error_rate", device="cpu"):
    """Builds the encoder and classifier from ``<folder>/hyperparams.yaml`` and loads the best
    checkpoint (lowest ``min_key``) from its save folder.

    Raises
    ------
    FileNotFoundError
        The folder has no ``hyperparams.yaml``, label encoder or checkpoint, with what to run.
    """
    folder = Path(folder)
    yaml_file = folder / "hyperparams.yaml"
    if not yaml_file.is_file():
        raise FileNotFoundError(
            f"{yaml_file} not found: --speaker_model must be the output folder of "
            "recipes/speaker/train.py (e.g. results/wavlm-lora-arcface/1986)."
        )
    with open(yaml_file, encoding="utf-8") as f:
        # no reseeding of the caller's random generators by the experiment's own seed line
        hparams = load_hyperpyyaml(f, {"__set_seed": None})
    if Path(hparams["save_folder"]).resolve() != (folder / "save").resolve():
        raise FileNotFoundError(
            f"{yaml_file} keeps its checkpoints in {hparams['save_folder']}, not in "
            f"{folder / 'save'}: run from the directory the speaker model was trained in (paths "
            "in it are relative to it), or pass the folder the training wrote."
        )
    label_file = Path(hparams["save_folder"]) / "label_encoder.txt"
    label_encoder = load_label_encoder(label_file)
    if label_encoder is None:
        raise FileNotFoundError(f"{label_file} not found: train the speaker model first.")
    set_classifier_outputs(hparams["classifier"], len(label_encoder))
    checkpoint = hparams["checkpointer"].recover_if_possible(min_key=min_key)
    if checkpoint is None:
        raise FileNotFoundError(
            f"No checkpoint in {hparams['save_folder']}: train the speaker model first."
        )
    logger.info("Speaker model from %s", checkpoint.path)
    encoder = hparams["encoder"].to(device).eval()
    classifier = hparams["classifier"].to(device).eval()
    return SpeakerModel(
        encoder,
        classifier,
        label_encoder,
        hparams["sample_rate"],
        str(checkpoint.path),
        hparams["iden_enrol_csv"],
        hparams["data_folder"],
    )


def speaker_branch(experiment, new_encoder, new_classifier, manifest, speakers, sample_rate):
    """The joint recipe's speaker branch.

    With ``experiment`` (a speaker-recipe output folder): that model, best checkpoint loaded
    (:func:`load_speaker_experiment`). Without (``None``): a fresh one from the base model,
    ``new_encoder()`` (e.g. WavLM Base+ with new LoRA adapters and head) and
    ``new_classifier(out_neurons=N)`` over the ``speakers`` selected from ``manifest`` (sorted,
    so the classes are the same on every run and on resume).
    """
    if experiment is not None:
        return load_speaker_experiment(experiment)
    available = sorted({r["spk_id"] for r in read_csv(manifest, UTTERANCE_COLUMNS)})
    selected = sorted(select_speakers(available, speakers, f"manifest {manifest}"))
    label_encoder = CategoricalEncoder()
    label_encoder.update_from_iterable(selected)
    label_encoder.expect_len(len(selected))
    logger.info("Speaker branch from the base model, %d classes", len(selected))
    return SpeakerModel(
        new_encoder(),
        new_classifier(out_neurons=len(selected)),
        label_encoder,
        sample_rate,
        None,
        None,  # no enrolment manifest: pass enrol_csv to evaluate
        None,
    )

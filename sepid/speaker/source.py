"""The one way a trained speaker model enters another recipe: an exported folder or a Hub repo
(``pretrained_interfaces/export.py``), never another experiment's training folder.

- :func:`load_speaker_interface`: the exported model as users load it
  (``foreign_class(..., classname="WavLMSpeakerInterface")``), for the evaluations that only
  embed and classify separated outputs.
- :class:`ExportedEncoderWeights`, :class:`ExportedClassifierWeights`: ``Pretrainer`` loadables
  with which a training YAML initialises its own speaker-branch modules (the joint recipe's
  ``speaker_encoder`` and ``classifier``) from the same kind of source, when the script calls the
  ``Pretrainer`` (never while the YAML is read).
- :func:`prepare_speaker_branch`: after the ``Pretrainer``, the branch's classes; without a source
  (a fresh branch from the base model) the classes are the selected speakers of a manifest.
"""

import logging
from pathlib import Path

import torch
from speechbrain.utils.checkpoints import mark_as_transfer, register_checkpoint_hooks

from sepid.data.speakers import speakers_of_manifest
from sepid.speaker.encoder import set_classifier_outputs

logger = logging.getLogger(__name__)

INTERFACE_FILE = "custom_interface.py"
INTERFACE_CLASS = "WavLMSpeakerInterface"
EXPORTED_FILES = ("hyperparams.yaml", INTERFACE_FILE, "embedder.ckpt", "classifier.ckpt")


def check_source(source, what="speaker_source"):
    """A local folder must hold an exported model; anything else must look like a Hub id."""
    path = Path(str(source)).expanduser()
    if path.is_dir():
        missing = [f for f in EXPORTED_FILES if not (path / f).is_file()]
        if (path / "hyperparams.yaml").is_file() and (path / "save").is_dir():
            raise FileNotFoundError(
                f"{what} {source} is a training output folder, not an exported model: export it "
                f"with `python pretrained_interfaces/export.py {source} --out <folder>` and pass "
                "that folder (or its Hub id)."
            )
        if missing:
            raise FileNotFoundError(
                f"{what} {source} is not a complete exported speaker model (missing {missing}): "
                "export it with pretrained_interfaces/export.py."
            )
    elif path.is_absolute() or str(source).startswith((".", "~")) or str(source).count("/") != 1:
        raise FileNotFoundError(
            f"{what}: no model folder at {source}, and it is not a Hub repo id (user/name)."
        )


def load_speaker_interface(source, savedir, device="cpu"):
    """The exported speaker model at ``source`` (folder or Hub id) through SpeechBrain's
    ``foreign_class``, in eval mode on ``device``."""
    from speechbrain.inference.interfaces import foreign_class

    check_source(source)
    model = foreign_class(
        source=str(source),
        pymodule_file=INTERFACE_FILE,
        classname=INTERFACE_CLASS,
        savedir=str(savedir),
        run_opts={"device": device},
    )
    model.mods.eval()
    logger.info(
        "Speaker model %s: %d classes, %d Hz",
        source,
        len(model.hparams.label_encoder),
        model.hparams.sample_rate,
    )
    return model


def _is_lora(key):
    return ".lora_A" in key or ".lora_B" in key


@register_checkpoint_hooks
class ExportedEncoderWeights:
    """Loads an exported ``embedder.ckpt`` into a ``sepid.speaker.encoder.WavLMSpeakerEncoder``.

    - Merged export (the default): every WavLM weight (LoRA folded in), pooling and projection.
      The weights a LoRA of this encoder parametrizes become the ``original`` under it; the
      encoder's own LoRA stays as initialised (``B = 0``), so it starts as the exported model
      and fine-tunes through fresh adapters.
    - Adapters export (``export.py --adapters``): the LoRA tensors and the head, on top of the
      base model the encoder was built from (``wavlm_source``: use the export's base model).
    """

    def __init__(self, encoder):
        self.encoder = encoder

    def _target_keys(self, state):
        """``exported key -> encoder key``."""
        own = self.encoder.state_dict()
        mapping = {}
        for key in state:
            if key in own:
                mapping[key] = key
                continue
            module, _, leaf = key.rpartition(".")
            original = f"{module}.parametrizations.{leaf}.original"
            if original in own:
                mapping[key] = original
        return mapping

    @mark_as_transfer
    def _load(self, path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.encoder.state_dict()
        adapters = any(_is_lora(k) for k in state)
        mapping = self._target_keys(state)
        if adapters:
            expected = set(self.encoder.trainable_state_dict())
        else:
            expected = {k for k in own if not _is_lora(k)}
        unexpected = sorted(set(state) - set(mapping))
        missing = sorted(expected - set(mapping.values()))
        wrong = sorted(k for k, t in mapping.items() if own[t].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(
                f"{path} does not fit the speaker encoder of this YAML (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}, other shapes {wrong[:3]}): set embedding_dim, "
                "pooling and the LoRA settings (adapters export) to the exported model's "
                "(its hyperparams.yaml)."
            )
        self.encoder.load_state_dict({mapping[k]: v for k, v in state.items()}, strict=False)
        logger.info(
            "Speaker encoder from %s (%s)",
            path,
            "LoRA adapters on the base model" if adapters else "merged; fresh LoRA on top",
        )


@register_checkpoint_hooks
class ExportedClassifierWeights:
    """Loads an exported ``classifier.ckpt`` into SpeechBrain's cosine ``Classifier``, taking its
    number of classes (the YAML cannot know it)."""

    def __init__(self, classifier):
        self.classifier = classifier

    @mark_as_transfer
    def _load(self, path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        weight = state.get("weight")
        if weight is None or weight.shape[1] != self.classifier.weight.shape[1]:
            raise ValueError(
                f"{path} is not a classifier over {self.classifier.weight.shape[1]}-dimensional "
                "embeddings: set embedding_dim to the exported model's."
            )
        set_classifier_outputs(self.classifier, weight.shape[0])
        self.classifier.load_state_dict(state)


def prepare_speaker_branch(
    label_encoder, classifier, speaker_source, speaker_manifest=None, train_speakers="all"
):
    """Call after the ``Pretrainer`` has loaded: with a ``speaker_source`` the label encoder and
    classifier came from it; without (None), the classes are ``train_speakers`` of
    ``speaker_manifest`` and the classifier gets one output each (fresh). Checks that the two
    agree; returns the label encoder.

    Arguments
    ---------
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
        The branch's label encoder (filled here without a source).
    classifier : speechbrain.lobes.models.ECAPA_TDNN.Classifier
        The branch's cosine classifier (resized here without a source).
    speaker_source : str or None
        The exported speaker model the ``Pretrainer`` loaded, or None for a fresh branch.
    speaker_manifest : str or Path, optional
        Speaker manifest (e.g. a data prep's ``train.csv``) whose speakers are the classes of a
        fresh branch; needed without ``speaker_source``.
    train_speakers : str, int, list or path
        The selection of its speakers (:func:`sepid.data.speakers.select_speakers`).
    """
    if speaker_source is None:
        if speaker_manifest is None:
            raise ValueError(
                "speaker_source is null (a fresh speaker branch from the base model): pass "
                "--speaker_manifest, the speaker manifest (e.g. a data prep's train.csv) whose "
                "train_speakers become the classes."
            )
        selected = speakers_of_manifest(speaker_manifest, train_speakers)
        label_encoder.update_from_iterable(selected)
        set_classifier_outputs(classifier, len(selected))
        logger.info("Speaker branch from the base model, %d classes", len(selected))
    if len(label_encoder) != classifier.weight.shape[0]:
        raise ValueError(
            f"The speaker branch's label encoder has {len(label_encoder)} speakers but its "
            f"classifier {classifier.weight.shape[0]} outputs: export the speaker model again."
        )
    return label_encoder

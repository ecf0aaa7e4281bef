#!/usr/bin/env python3
"""Trains a SepFormer separator and a WavLM + LoRA + ArcFace speaker branch together.

The objective is permutation-invariant SI-SNR over the two sources plus a weighted ArcFace speaker
loss on each separated output, whose label is the speaker of the reference source that the SAME
permutation assigned to it. Nothing is detached between the separator and the speaker branch, so
the speaker loss reaches the separator. Mixtures are drawn on the fly (dynamic mixing) with the
same speed perturbation applied to both sources before mixing. Gradient accumulation, clipping,
mixed precision are the Brain's own (``grad_accumulation_factor``, ``max_grad_norm``,
``precision``); a step whose loss or gradients are not finite is skipped and counted, and a
non-finite validation is never checkpointed (``sepid.training.brain.FiniteBrain``).

The speaker branch starts from an exported speaker model (``--speaker_source``: a folder written
by ``pretrained_interfaces/export.py`` or its Hub id), loaded into the YAML's modules by the
``Pretrainer``; with ``--speaker_source=null`` it starts from the base model, its classes the
``train_speakers`` of ``--speaker_manifest``.

To run::

    python pretrained_interfaces/export.py results/wavlm-lora-arcface/1986 --out exported/spk
    python recipes/joint/train.py hparams/sepformer-wavlm-speaker.yaml \\
        --data_folder /data/voxceleb2 --speaker_source exported/spk \\
        --speaker_manifest results/wavlm-lora-arcface/1986/prep/train.csv

Methods: SepFormer (Subakan et al., ICASSP 2021), permutation-invariant training (Kolbaek et al.,
2017), SI-SNR (Le Roux et al., 2019), WavLM (Chen et al., 2022), LoRA (Hu et al., 2022), ArcFace
(Deng et al., 2019).
"""

import sys

import speechbrain as sb
import torch
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.logger import get_logger

from sepid.data.manifest import read_csv
from sepid.data.mixtures import (
    DynamicMixingDataset,
    MixingOptions,
    mixture_collate,
    written_mixture_dataset,
)
from sepid.data.schema import UTTERANCE_COLUMNS, mixture_csv
from sepid.joint import output_labels, pit_si_snr_loss, separate_with_modules
from sepid.speaker.encoder import log_trainable_parameters
from sepid.training.brain import FiniteBrain, check_trainable_data
from sepid.training.distributed import global_mean
from sepid.training.experiment import start_experiment

logger = get_logger(__name__)


class JointBrain(FiniteBrain):
    """SepFormer + speaker branch, trained with PIT SI-SNR + permutation-aligned speaker loss."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        sources = torch.stack([batch.s1_sig.data, batch.s2_sig.data], dim=-1)  # [B, T, 2]
        if stage == sb.Stage.TRAIN and self.hparams.speed_perturb:
            # One speed per call: both sources of every mixture get the same perturbation.
            b = sources.shape[0]
            stacked = self.hparams.speed_perturber(torch.cat([sources[..., 0], sources[..., 1]]))
            sources = torch.stack([stacked[:b], stacked[b:]], dim=-1)
        mix = sources.sum(-1)
        estimates = separate_with_modules(
            self.modules.separator_encoder,
            self.modules.masknet,
            self.modules.separator_decoder,
            mix,
            self.hparams.num_spks,
        )
        # Each output at the speaker model's rate; no detach: the speaker loss reaches the separator.
        n_out = estimates.shape[-1]
        outputs = self.modules.resampler(estimates.transpose(1, 2).reshape(-1, estimates.shape[1]))
        # padded items: their relative length, the same for both outputs of a mixture
        lengths = batch.s1_sig.lengths.to(self.device).repeat_interleave(n_out)
        embeddings = self.modules.speaker_encoder(outputs, lengths)
        logits = self.modules.classifier(embeddings.unsqueeze(1))  # [B * n, 1, C]
        return {"estimates": estimates, "sources": sources, "mix": mix, "logits": logits}

    def compute_objectives(self, predictions, batch, stage):
        sources, estimates = predictions["sources"], predictions["estimates"]
        si_snr_loss, assigned = pit_si_snr_loss(sources, estimates)
        # Classes as the speaker branch's label encoder names them (not the mixtures' indices).
        encode = self.hparams.label_encoder.encode_label
        classes = torch.tensor(
            [[encode(a), encode(b)] for a, b in zip(batch.s1_spk, batch.s2_spk, strict=True)],
            device=self.device,
        )
        labels = output_labels(assigned, classes).reshape(-1, 1)  # follows the SI-SNR permutation
        speaker_loss = self.hparams.speaker_cost(predictions["logits"], labels)
        si_snr = si_snr_loss.mean()
        if stage == sb.Stage.TRAIN and self.hparams.threshold_byloss:
            # Training only (as SpeechBrain's SepFormer recipes): drop trivial examples. With
            # none left the loss is NaN: FiniteBrain skips that step and counts it.
            keep = si_snr_loss > self.hparams.loss_lower_lim
            self.n_dropped += int((~keep).sum())
            si_snr = si_snr_loss[keep].mean() if keep.any() else si_snr_loss.sum() * float("nan")
        loss = (
            self.hparams.si_snr_loss_weight * si_snr
            + self.hparams.speaker_loss_weight * speaker_loss
        )
        if stage != sb.Stage.TRAIN:
            mix_si_snr, _ = pit_si_snr_loss(
                sources, predictions["mix"].unsqueeze(-1).repeat(1, 1, sources.shape[-1])
            )
            self.si_snri.extend((mix_si_snr - si_snr_loss).tolist())
            predicted = predictions["logits"].squeeze(1).argmax(-1, keepdim=True)
            self.correct.extend((predicted == labels).flatten().tolist())
        return loss

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)  # non-finite counters
        self.n_dropped = 0
        self.si_snri, self.correct = [], []
        if stage == sb.Stage.TRAIN and isinstance(self.train_set, DynamicMixingDataset):
            self.train_set.set_epoch(epoch)  # new mixtures every epoch

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_stats = {
                "loss": stage_loss,
                "dropped_examples": self.n_dropped,
                "nonfinite_skipped": self.nonfinite_skipped,
            }
            return
        n = len(self.si_snri)
        stats = {
            "loss": global_mean(stage_loss, n),
            "si_snri": global_mean(sum(self.si_snri) / max(n, 1), n),
            "speaker_accuracy": global_mean(
                sum(self.correct) / max(len(self.correct), 1), len(self.correct)
            ),
        }
        if stage == sb.Stage.VALID:
            # SpeechBrain's ReduceLROnPlateau only returns the new rate: apply it.
            old_lr, new_lr = self.hparams.lr_scheduler([self.optimizer], epoch, stats["loss"])
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr, "next_lr": new_lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpoint_if_finite(
                stage_loss,
                stats,
                meta={"si_snri": stats["si_snri"]},
                max_keys=["si_snri"],
                num_to_keep=2,
            )


def mixture_datasets(hparams):
    """Dynamic-mixing train set (new mixtures each epoch) and a fixed valid set drawn from
    held-out audio of the same speakers: the ``valid_speaker_manifest`` (the speaker data prep's
    ``valid.csv``: held-out utterances, or held-out segments of speakers with one utterance,
    which its ``train.csv`` rows stop before) or, without one, ``valid_utt_fraction`` of each
    speaker's utterances. With ``train_mixture_folder``: the written mixtures of
    ``data_prep/make_mixtures.py`` (its ``train.csv`` and ``valid.csv``)."""
    folder = hparams["train_mixture_folder"]
    if folder is not None:
        rate = hparams["sample_rate"]
        return (
            written_mixture_dataset(
                f"{folder}/{mixture_csv('train')}", folder, rate, hparams["segment_seconds"]
            ),
            written_mixture_dataset(
                f"{folder}/{mixture_csv('valid')}",
                folder,
                rate,
                hparams["valid_segment_seconds"],
                random=False,
            ),
        )
    mixing = MixingOptions(
        gain_db_range=tuple(hparams["gain_db_range"]),
        min_duration=hparams["min_duration"],
        seed=hparams["seed"],
    )
    common = dict(
        split_speakers={"train": hparams["train_speakers"], "valid": 0, "test": 0},
        valid_utt_fraction=hparams["valid_utt_fraction"],
        sample_rate=hparams["sample_rate"],
        mixing=mixing,
    )
    manifest, root = hparams["speaker_manifest"], hparams["data_folder"]
    if manifest is None:
        raise ValueError(
            "Dynamic mixing draws from a speaker manifest: pass --speaker_manifest (e.g. the "
            "speaker data prep's train.csv), or --train_mixture_folder for written mixtures."
        )
    valid_manifest = hparams["valid_speaker_manifest"]
    if valid_manifest is not None:
        common["valid_utt_fraction"] = 0.0  # the valid manifest holds the held-out audio
    train = DynamicMixingDataset.for_split(
        "train",
        manifest,
        root,
        hparams["n_train_mixtures"],
        segment_seconds=hparams["segment_seconds"],
        **common,
    )
    if valid_manifest is None:
        valid = DynamicMixingDataset.for_split(
            "valid",
            manifest,
            root,
            hparams["n_valid_mixtures"],
            segment_seconds=hparams["valid_segment_seconds"],
            **common,
        )
        return train, valid
    held_out = {row["spk_id"] for row in read_csv(valid_manifest, UTTERANCE_COLUMNS)}
    speakers = [s for s in train.speakers if s in held_out]
    if len(speakers) < len(train.speakers):
        logger.info(
            "%d of the %d train speakers have held-out audio in %s: valid mixtures are theirs",
            len(speakers),
            len(train.speakers),
            valid_manifest,
        )
    valid = DynamicMixingDataset(
        valid_manifest,
        root,
        speakers,
        hparams["n_valid_mixtures"],
        segment_seconds=hparams["valid_segment_seconds"],
        sample_rate=hparams["sample_rate"],
        mixing=mixing,
    )
    return train, valid


def dataset_speakers(dataset):
    """Every speaker of a mixture dataset (dynamic or written)."""
    if isinstance(dataset, DynamicMixingDataset):
        return set(dataset.speakers)
    return {r[k] for r in dataset.data.values() for k in ("s1_spk", "s2_spk")}


def check_speaker_classes(train_set, valid_set, label_encoder):
    """The speaker branch names classes through its own label encoder: every mixture speaker
    must be one of its classes."""
    speakers = dataset_speakers(train_set) | dataset_speakers(valid_set)
    unknown = sorted(speakers - set(label_encoder.lab2ind))
    if unknown:
        raise ValueError(
            f"Mixture speakers {unknown[:5]} are not classes of the speaker model; train the "
            "speaker model on a superset of train_speakers."
        )


if __name__ == "__main__":
    hparams_file, run_opts, overrides, hparams = start_experiment(sys.argv[1:])
    run_on_main(hparams["pretrainer"].collect_files)
    hparams["pretrainer"].load_collected()  # the separator and, from speaker_source, the branch
    label_encoder = hparams["prepare_speaker_branch"]()

    train_set, valid_set = mixture_datasets(hparams)
    check_speaker_classes(train_set, valid_set, label_encoder)
    check_trainable_data(
        n_classes=len(dataset_speakers(train_set)),
        n_train_items=len(train_set),
        loader_options=hparams["train_dataloader_opts"],
        where=hparams["train_mixture_folder"] or hparams["speaker_manifest"],
    )

    if hparams["freeze_separator"]:
        for name in ("separator_encoder", "masknet", "separator_decoder"):
            hparams["modules"][name].requires_grad_(False)
    if hparams["freeze_speaker"]:
        for name in ("speaker_encoder", "classifier"):
            hparams["modules"][name].requires_grad_(False)

    brain = JointBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.train_set = train_set
    log_trainable_parameters(brain.modules)
    # mixture_collate pads the dynamic items; SpeechBrain's default PaddedBatch the written ones
    loader = dict(collate_fn=mixture_collate) if hparams["train_mixture_folder"] is None else {}
    brain.fit(
        brain.hparams.epoch_counter,
        train_set,
        valid_set,
        train_loader_kwargs={**hparams["train_dataloader_opts"], **loader},
        valid_loader_kwargs={**hparams["valid_dataloader_opts"], **loader},
    )
    logger.info(
        "To use or publish this model: python pretrained_interfaces/export.py %s --out %s "
        "[--push user/repo]",
        hparams["output_folder"],
        f"{hparams['output_folder']}-export",
    )

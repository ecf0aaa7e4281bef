#!/usr/bin/env python3
"""Fine-tunes WavLM with LoRA and an ArcFace head for speaker identification and verification.

By default (``freeze_backbone: True``) only the LoRA adapters (on the attention projections), the
pooling/projection head and the ArcFace classifier train and WavLM itself stays frozen;
``--freeze_backbone=False`` fine-tunes the whole WavLM as well (the checkpoints then hold it).
Training uses random fixed-length crops, validation whole utterances (bounded length) or held-out
segments of the same speakers; the checkpoint with the lowest validation classification error is
kept. The learning-rate and margin schedules are set as fractions of the run, whose length
(epochs x optimizer steps per epoch) is counted here from the training set.

To run::

    python recipes/speaker/train.py hparams/wavlm-lora-arcface.yaml --data_folder /data/voxceleb2

Multi-GPU::

    torchrun --nproc_per_node=4 recipes/speaker/train.py hparams/wavlm-lora-arcface.yaml \\
        --data_folder /data/voxceleb2

Methods: WavLM (Chen et al., 2022), LoRA (Hu et al., 2022), ArcFace / additive angular margin
(Deng et al., 2019), margin warm-up as in WeSpeaker (Wang et al., 2023).
"""

import sys

import speechbrain as sb
import torch
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.logger import get_logger

from sepid.data.dataio import (
    NO_VALIDATION_ROWS,
    label_pipeline,
    load_manifest,
    random_crop_pipeline,
    segment_pipeline,
    speaker_label_encoder,
)
from sepid.data.schema import LABEL_ENCODER_FILE, SEGMENT_COLUMNS
from sepid.speaker.encoder import log_trainable_parameters, set_classifier_outputs
from sepid.training.brain import FiniteBrain, check_trainable_data
from sepid.training.distributed import global_mean
from sepid.training.experiment import start_experiment
from sepid.training.schedules import optimizer_steps_per_epoch

logger = get_logger(__name__)


class SpeakerBrain(FiniteBrain):
    """WavLM + LoRA + ArcFace speaker classifier."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        if stage == sb.Stage.TRAIN and self.hparams.augment:
            wavs, wav_lens = self.hparams.wav_augment(wavs, wav_lens)
        embeddings = self.modules.encoder(wavs, wav_lens)
        return self.modules.classifier(embeddings.unsqueeze(1))

    def compute_objectives(self, predictions, batch, stage):
        spk_ids, _ = batch.spk_id_encoded
        if stage == sb.Stage.TRAIN and self.hparams.augment:
            spk_ids = self.hparams.wav_augment.replicate_labels(spk_ids)
        loss = self.hparams.compute_cost(predictions, spk_ids)
        if stage != sb.Stage.TRAIN:
            self.error_metrics.append(batch.id, predictions, spk_ids)
        return loss

    def on_fit_batch_start(self, batch, should_step):
        # Both schedules are functions of the optimizer step (checkpointed by the Brain).
        self.hparams.lr_scheduler(self.optimizer, self.optimizer_step)
        self.margin = self.hparams.margin_scheduler(self.hparams.compute_cost, self.optimizer_step)

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)  # non-finite counters
        if stage != sb.Stage.TRAIN:
            self.error_metrics = self.hparams.error_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss, "nonfinite_skipped": self.nonfinite_skipped}
            return
        # Every rank logs and checkpoints on the same, reduced numbers (SpeechBrain 1.1 runs the
        # whole validation set on each rank, so the reduction is an identity there today).
        n_items = len(self.error_metrics.ids)
        error = global_mean(self.error_metrics.summarize("average"), n_items)
        stats = {"loss": global_mean(stage_loss, n_items), "error_rate": error}
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={
                    "epoch": epoch,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "margin": getattr(self, "margin", 0.0),
                },
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpoint_if_finite(
                stage_loss,
                stats,
                meta={"error_rate": error},
                min_keys=["error_rate"],
                num_to_keep=2,
            )


def dataio_prep(hparams):
    """The data prep's segment manifests as datasets: train (random ``segment_seconds`` crops of
    each row's segment), valid (each row's segment, cut to ``max_valid_seconds``), both with the
    speaker labels of a label encoder fitted on the training speakers (saved in ``save_folder``).
    Returns ``train_set, valid_set, label_encoder``."""
    train_csv, valid_csv = hparams["train_csv"], hparams["valid_csv"]
    train_set = load_manifest(train_csv, hparams["data_folder"], SEGMENT_COLUMNS)
    valid_set = load_manifest(
        valid_csv, hparams["data_folder"], SEGMENT_COLUMNS, empty_hint=NO_VALIDATION_ROWS
    )
    rate = hparams["sample_rate"]
    train_set.add_dynamic_item(random_crop_pipeline(rate, hparams["segment_seconds"]))
    valid_set.add_dynamic_item(segment_pipeline(rate, hparams["max_valid_seconds"]))
    label_encoder = speaker_label_encoder(
        path=f"{hparams['save_folder']}/{LABEL_ENCODER_FILE}",
        train_set=train_set,
        valid_set=valid_set,
        train_csv=train_csv,
        valid_csv=valid_csv,
    )
    for dataset in (train_set, valid_set):
        dataset.add_dynamic_item(label_pipeline(label_encoder))
        dataset.set_output_keys(["id", "sig", "spk_id", "spk_id_encoded"])
    return train_set, valid_set, label_encoder


if __name__ == "__main__":
    hparams_file, run_opts, overrides, hparams = start_experiment(sys.argv[1:])

    run_on_main(hparams["prepare_data"])
    train_set, valid_set, label_encoder = dataio_prep(hparams)
    check_trainable_data(
        n_classes=len(label_encoder),
        n_train_items=len(train_set),
        loader_options=hparams["train_dataloader_opts"],
        where=hparams["train_csv"],
    )
    if hparams["n_speakers"] == 0:
        set_classifier_outputs(hparams["classifier"], len(label_encoder))
    elif hparams["n_speakers"] != len(label_encoder):
        raise ValueError(
            f"n_speakers is {hparams['n_speakers']} in {hparams_file} but the training manifest "
            f"has {len(label_encoder)} speakers; set n_speakers: 0 to take it from data prep."
        )

    brain = SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    # The run's length, for the schedules given as fractions of it (unless fixed in the YAML).
    total_steps = hparams["total_steps"] or hparams["number_of_epochs"] * optimizer_steps_per_epoch(
        n_items=len(train_set),
        batch_size=hparams["train_dataloader_opts"]["batch_size"],
        drop_last=hparams["train_dataloader_opts"].get("drop_last", False),
        grad_accumulation=brain.grad_accumulation_factor,
        world_size=torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
    )
    for schedule in (hparams["lr_scheduler"], hparams["margin_scheduler"]):
        schedule.set_total_steps(total_steps)
    logger.info(
        "Schedules over %d optimizer steps: warm-up %d, margin %.2f held %d then ramped %d steps",
        total_steps,
        hparams["lr_scheduler"].warmup_length,
        hparams["margin"],
        hparams["margin_scheduler"].hold_steps,
        hparams["margin_scheduler"].ramp_steps,
    )
    log_trainable_parameters(brain.modules)
    brain.fit(
        brain.hparams.epoch_counter,
        train_set,
        valid_set,
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    logger.info(
        "To use or publish this model: python pretrained_interfaces/export.py %s --out %s "
        "[--push user/repo] (after recipes/speaker/evaluate.py: metrics and the threshold)",
        hparams["output_folder"],
        f"{hparams['output_folder']}-export",
    )

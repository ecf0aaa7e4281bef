#!/usr/bin/env python3
"""Separates two-speaker mixtures with a pretrained SpeechBrain separator, scores the separation
and identifies the speaker of each separated output.

Separation metrics, all at the separator's sample rate (mixture and references resampled to it
once) and permutation invariant: SI-SDR and SI-SDRi (best permutation), SDR/SIR/SAR (BSS-eval v3,
both estimates against both references, SIR-maximising permutation) and SDRi, PESQ (narrow-band
at 8 kHz, wide-band at 16 kHz) and STOI. The unprocessed mixture is scored the same way.

Speaker identity: each separated output is resampled to the speaker model's rate and its speaker
predicted by cosine to enrolment centroids and by the classifier head, for the base model and the
fine-tuned model; each output's reference label is the speaker of the reference source that the
SI-SDR permutation assigned to it. The clean sources and the raw mixture give the upper and lower
bounds.

To run::

    python data_prep/make_mixtures.py --manifest results/prep/train.csv \\
        --data_folder /data/voxceleb2 --save_folder /data/mix
    python recipes/separation/evaluate.py hparams/separation-eval.yaml --data_folder /data/mix \\
        --speaker_model results/wavlm-lora-arcface/1986

Methods: SepFormer (Subakan et al., ICASSP 2021), SI-SDR (Le Roux et al., ICASSP 2019),
BSS-eval (Vincent et al., 2006), PESQ (ITU-T P.862), STOI (Taal et al., 2011).
"""

import json
import sys
from pathlib import Path

import numpy as np
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from sepid.audio import resample
from sepid.distributed import gather_objects
from sepid.manifest import write_atomic
from sepid.metrics.separation import evaluate_many
from sepid.separation import (
    SpeakerIdentifier,
    accuracy,
    assigned_labels,
    load_separator,
    separate,
    write_separation_outputs,
)
from sepid.separation_data import enrolment_signals, mixture_dataset
from sepid.speaker_model import load_speaker_experiment
from sepid.tables import separation_results_table

logger = get_logger(__name__)


class SeparationEvalBrain(sb.Brain):
    """Separates each mixture (``compute_forward``), collects what the metrics need
    (``compute_objectives``) and scores everything at the end (``on_stage_end``)."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        mix, _ = batch.mix_sig
        chunk = self.hparams.separation_chunk_seconds
        overlap = self.hparams.separation_overlap_seconds
        rate = self.separator_rate
        with torch.no_grad():
            return separate(
                self.separator.separate_batch,
                mix[:1],
                None if chunk is None else int(chunk * rate),
                int(overlap * rate),
            )

    def compute_objectives(self, predictions, batch, stage):
        mix = batch.mix_sig.data[0].cpu()
        refs = torch.stack([batch.s1_sig.data[0], batch.s2_sig.data[0]]).cpu()
        est = predictions.T.float().cpu()[:, : mix.shape[0]]
        item = {
            "ID": batch.id[0],
            "estimates": est.numpy(),
            "references": refs.numpy(),
            "mixture": mix.numpy(),
            "speakers": [batch.s1_spk[0], batch.s2_spk[0]],
            "predictions": {},
        }
        to_spk = self.speaker_rate
        outputs = [resample(e, self.separator_rate, to_spk) for e in est]
        clean = [batch.s1_spk_sig.data[0].cpu(), batch.s2_spk_sig.data[0].cpu()]
        raw = [resample(mix, self.separator_rate, to_spk)]
        for tag, identifier in self.identifiers.items():
            item["predictions"][tag] = {
                "separated": identifier.predict(outputs),
                "clean": identifier.predict(clean),
                "mixture": identifier.predict(raw),
            }
        self.items.append(item)
        # Evaluation has no objective; the Brain's evaluate loop still averages a stage loss.
        return torch.zeros((), device=self.device)

    def on_stage_start(self, stage, epoch=None):
        self.items = []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        items = [i for part in gather_objects(self.items) for i in part]
        if not if_main_process():
            return
        self.report = score_items(items, self.hparams, self.separator_rate, self.known_speakers)


def score_items(items, hparams, sample_rate, known_speakers):
    """Separation metrics (both cores), speaker accuracies with permutation-aligned labels, and
    the same for the unprocessed mixture; writes the outputs and returns the report.
    ``known_speakers[(model, method)]`` is the set of speakers that method can name at all
    (enrolled speakers; the classifier's training speakers): outputs of other speakers are
    excluded from its accuracy and counted."""
    metric_args = dict(
        sample_rate=sample_rate,
        n_jobs=hparams.metric_jobs,
        metrics=hparams.separation_metrics,
        backend=hparams.bss_backend,
    )
    rows = evaluate_many(
        [(i["estimates"], i["references"], i["mixture"]) for i in items], **metric_args
    )
    mixture_rows = evaluate_many(
        [(np.stack([i["mixture"]] * 2), i["references"], i["mixture"]) for i in items],
        **metric_args,
    )
    speaker = {}
    for row, mrow, item in zip(rows, mixture_rows, items, strict=True):
        row["ID"] = mrow["ID"] = item["ID"]
        row["spk_s1"], row["spk_s2"] = item["speakers"]
        # Output perm[i] was assigned to reference i: it carries reference i's speaker.
        expected = {
            "separated": assigned_labels(row["perm"], item["speakers"])
            if row["perm"] is not None
            else [None, None],
            "clean": item["speakers"],
            # The raw mixture stands in for both outputs: at most one of them can be right.
            "mixture": item["speakers"],
        }
        for tag, by_condition in item["predictions"].items():
            for condition, pred in by_condition.items():
                predicted = {
                    "embedding": pred.by_embedding * (2 if condition == "mixture" else 1),
                    "classifier": pred.by_classifier * (2 if condition == "mixture" else 1),
                }
                for method, labels in predicted.items():
                    key = (tag, condition, method)
                    got, want = speaker.setdefault(key, ([], []))
                    got.extend(labels)
                    want.extend(expected[condition])
                if condition == "separated":
                    for j, label in enumerate(pred.by_embedding):
                        row[f"pred_{tag}_emb_out{j + 1}"] = label
    out = Path(hparams.eval_folder)
    summary = write_separation_outputs(out, rows, sample_rate)
    mixture_summary = write_separation_outputs(out / "mixture", mixture_rows, sample_rate)
    speaker_report = {}
    for (tag, condition, method), (got, want) in speaker.items():
        if method == "classifier" and all(g is None for g in got):
            continue
        speaker_report.setdefault(tag, {}).setdefault(condition, {})[method] = accuracy(
            got, want, known=known_speakers.get((tag, method))
        )
    return {
        "sample_rate": sample_rate,
        "n_mixtures": len(items),
        "separation": summary,
        "mixture": mixture_summary,
        "speaker_identification": speaker_report,
    }


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    device = run_opts.get("device", "cpu")
    separator = load_separator(hparams["separator_source"], hparams["separator_savedir"], device)
    separator_rate = int(separator.hparams.sample_rate)

    identifiers, speaker_rate, known_speakers = {}, None, {}
    if hparams["speaker_model"] is not None:
        model = load_speaker_experiment(hparams["speaker_model"], device=device)
        speaker_rate = model.sample_rate
        enrol = enrolment_signals(hparams, model)
        identifiers["pretrained"] = SpeakerIdentifier(model, enrol, pretrained_only=True)
        identifiers["finetuned"] = SpeakerIdentifier(model, enrol)
        known_speakers = {
            ("pretrained", "embedding"): set(enrol),
            ("finetuned", "embedding"): set(enrol),
            ("finetuned", "classifier"): set(model.label_encoder.lab2ind),
        }
    else:
        logger.warning("No --speaker_model: separation metrics only, no speaker identification.")

    dataset, corpus_rate = mixture_dataset(hparams, separator_rate, speaker_rate)
    if corpus_rate != separator_rate:
        logger.info(
            "Mixtures are at %d Hz and %s runs at %d Hz: mixtures and references are resampled "
            "once to %d Hz; every separation metric is at %d Hz.",
            corpus_rate,
            hparams["separator_source"],
            separator_rate,
            separator_rate,
            separator_rate,
        )
    brain = SeparationEvalBrain(
        modules={"separator": separator.mods}, hparams=hparams, run_opts=run_opts
    )
    brain.separator = separator
    brain.separator_rate = separator_rate
    brain.speaker_rate = speaker_rate
    brain.identifiers = identifiers
    brain.known_speakers = known_speakers
    brain.evaluate(dataset, test_loader_kwargs=hparams["eval_dataloader_opts"])

    if if_main_process():
        command = " ".join(["python", *sys.argv])
        result = {
            "command": command,
            "hparams_file": hparams_file,
            "separator": str(hparams["separator_source"]),
            "speaker_model": hparams["speaker_model"],
            **brain.report,
        }
        out = Path(hparams["eval_folder"])
        write_atomic(out / "metrics.json", json.dumps(result, indent=2))
        table = separation_results_table(
            {
                "mixture (unprocessed)": brain.report["mixture"],
                str(hparams["separator_source"]): brain.report["separation"],
            },
            brain.report["speaker_identification"],
            separator_rate,
            command,
        )
        write_atomic(out / "results.md", table)
        logger.info("Results (%s):\n%s", out / "metrics.json", table)

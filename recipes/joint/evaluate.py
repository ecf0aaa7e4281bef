#!/usr/bin/env python3
"""Compares the pretrained separator + the speaker recipe's model with the jointly trained model.

Both systems are scored by the separation evaluation (``sepid.separation_eval``, the same code as
``recipes/separation/evaluate.py``) on the same written test mixtures: SI-SDR/SI-SDRi, SDR/SIR/SAR
and SDRi (BSS-eval, both estimates against both references), PESQ, STOI, all at the separator's
rate, plus speaker identification of each separated output (by enrolment centroid and by the
classifier head, labels from the SI-SDR permutation), with the clean-source and raw-mixture
bounds.

To run::

    python recipes/joint/evaluate.py hparams/sepformer-wavlm-speaker.yaml \\
        --data_folder /data/voxceleb2 --speaker_model results/wavlm-lora-arcface/1986 \\
        --mixture_folder /data/mix
"""

import json
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from sepid.experiment import start_experiment
from sepid.manifest import write_atomic
from sepid.models.joint import separate_with_modules
from sepid.separation import load_separator
from sepid.separation_data import enrolment_signals, log_rates, mixture_dataset
from sepid.separation_eval import SeparationEvalBrain, speaker_identifiers
from sepid.speaker_model import load_speaker_experiment
from sepid.tables import separation_results_table

logger = get_logger(__name__)
SEPARATOR_MODULES = ("separator_encoder", "masknet", "separator_decoder")

if __name__ == "__main__":
    hparams_file, run_opts, overrides, hparams = start_experiment(sys.argv[1:])
    if hparams["mixture_folder"] is None:
        raise ValueError(
            "Pass --mixture_folder: the test mixtures written by data_prep/make_mixtures.py."
        )
    device = run_opts.get("device", "cpu")
    # The joint model: its best checkpoint by validation SI-SNRi.
    checkpoint = hparams["checkpointer"].recover_if_possible(max_key="si_snri")
    if checkpoint is None:
        raise FileNotFoundError(
            f"No checkpoint in {hparams['save_folder']}: train first with recipes/joint/train.py "
            f"{hparams_file} (same overrides)."
        )
    rate = hparams["sample_rate"]
    # The baselines: the pretrained separator and the speaker recipe's own model, untouched.
    baseline = load_separator(hparams["separator_source"], hparams["separator_savedir"], device)
    if int(baseline.hparams.sample_rate) != rate:
        raise ValueError(
            f"{hparams['separator_source']} runs at {baseline.hparams.sample_rate} Hz but "
            f"sample_rate is {rate} in {hparams_file}: set sample_rate to the separator's rate."
        )
    joint_speaker = replace(
        hparams["speaker"],
        encoder=hparams["speaker_encoder"].to(device).eval(),
        classifier=hparams["classifier"].to(device).eval(),
        checkpoint=str(checkpoint.path),
    )
    if hparams["speaker_model"] is not None:
        speaker_model = load_speaker_experiment(hparams["speaker_model"], device=device)
        baseline_tags = ("pretrained", "finetuned")
    else:  # the joint branch started from the base model: that (LoRA off, no head) is the baseline
        speaker_model, baseline_tags = joint_speaker, ("pretrained",)
    enrol = enrolment_signals(hparams, speaker_model)
    modules = hparams["modules"]
    systems = {
        "pretrained separator": (
            baseline.separate_batch,
            baseline.mods,
            speaker_identifiers(speaker_model, enrol, tags=baseline_tags),
        ),
        "joint model": (
            partial(
                separate_with_modules,
                *(modules[k] for k in SEPARATOR_MODULES),
                num_spks=hparams["num_spks"],
            ),
            torch.nn.ModuleDict({k: modules[k] for k in SEPARATOR_MODULES}),
            speaker_identifiers(joint_speaker, enrol, tags=("joint",)),
        ),
    }
    dataset, corpus_rate = mixture_dataset(
        hparams["test_csv"], hparams["mixture_folder"], rate, speaker_model.sample_rate
    )
    log_rates(corpus_rate, rate, "the separators")
    out = Path(hparams["eval_folder"])
    reports = {}
    for name, (separate_batch, mods, (identifiers, known)) in systems.items():
        brain = SeparationEvalBrain(modules={"separator": mods}, hparams=hparams, run_opts=run_opts)
        brain.configure(
            separate_batch,
            rate,
            out / name.replace(" ", "_"),
            identifiers,
            speaker_model.sample_rate,
            known,
        )
        brain.modules.eval()
        brain.evaluate(dataset, test_loader_kwargs=hparams["eval_dataloader_opts"])
        reports[name] = brain.report if if_main_process() else None

    if if_main_process():
        command = " ".join(["python", *sys.argv])
        result = {"command": command, "hparams_file": hparams_file, "systems": reports}
        write_atomic(out / "metrics.json", json.dumps(result, indent=2))
        summaries = {"mixture (unprocessed)": reports["pretrained separator"]["mixture"]}
        summaries.update({name: r["separation"] for name, r in reports.items()})
        speaker = {
            f"{system}: {model}": value
            for system, r in reports.items()
            for model, value in r["speaker_identification"].items()
        }
        table = separation_results_table(summaries, speaker, rate, command)
        write_atomic(out / "results.md", table)
        logger.info("Results (%s):\n%s", out / "metrics.json", table)

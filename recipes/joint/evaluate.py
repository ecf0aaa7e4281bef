#!/usr/bin/env python3
"""Compares the pretrained separator + the speaker recipe's model with the jointly trained model.

Both systems are scored by the separation evaluation (``sepid.separation.evaluation``, the same code as
``recipes/separation/evaluate.py``) on the same written test mixtures: SI-SDR/SI-SDRi, SDR/SIR/SAR
and SDRi (BSS-eval, both estimates against both references), PESQ, STOI, all at the separator's
rate, plus speaker identification of each separated output (by enrolment centroid and by the
classifier head, labels from the SI-SDR permutation), with the clean-source and raw-mixture
bounds. The baseline's speaker model is ``speaker_source`` loaded as users load it
(``foreign_class``); with ``speaker_source: null`` (a branch trained from the base model) the
baseline is the base model's mean-pooled hidden states.

To run (the training command's options, plus the test mixtures and the enrolment)::

    python recipes/joint/evaluate.py hparams/sepformer-wavlm-speaker.yaml \\
        --data_folder /data/voxceleb2 --speaker_source exported/spk \\
        --speaker_manifest results/wavlm-lora-arcface/1986/prep/train.csv --mixture_folder /data/mix \\
        --enrol_csv results/wavlm-lora-arcface/1986/prep/iden_enrol.csv \\
        --enrol_data_folder /data/voxceleb2
"""

import json
import sys
from functools import partial
from pathlib import Path

import torch
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from sepid.data.manifest import write_atomic
from sepid.joint import separate_with_modules
from sepid.report.tables import separation_results_table
from sepid.separation.data import (
    enrolment_signals,
    log_rates,
    mixture_dataset,
    mixture_speakers,
)
from sepid.separation.evaluation import SeparationEvalBrain
from sepid.separation.separator import interface_identifier, load_separator, module_identifier
from sepid.speaker.source import load_speaker_interface
from sepid.training.distributed import load_on_every_rank
from sepid.training.experiment import start_experiment

logger = get_logger(__name__)
SEPARATOR_MODULES = ("separator_encoder", "masknet", "separator_decoder")

if __name__ == "__main__":
    hparams_file, run_opts, overrides, hparams = start_experiment(sys.argv[1:])
    if hparams["mixture_folder"] is None:
        raise ValueError(
            "Pass --mixture_folder: the test mixtures written by data_prep/make_mixtures.py."
        )
    device = run_opts.get("device", "cpu")
    # The joint model: the YAML's modules as training initialised them, then its best checkpoint
    # by validation SI-SNRi (the checkpoint holds what trained: LoRA, heads, the separator).
    # Files fetched by the main process first (ranks fetching into one folder at once race).
    run_on_main(hparams["pretrainer"].collect_files)
    hparams["pretrainer"].load_collected()
    label_encoder = hparams["prepare_speaker_branch"]()
    checkpoint = hparams["checkpointer"].recover_if_possible(max_key="si_snri")
    if checkpoint is None:
        raise FileNotFoundError(
            f"No checkpoint in {hparams['save_folder']}: train first with recipes/joint/train.py "
            f"{hparams_file} (same overrides)."
        )
    rate, speaker_rate = hparams["sample_rate"], hparams["speaker_sample_rate"]
    # The baselines: the pretrained separator and the speaker model, untouched.
    baseline = load_on_every_rank(
        load_separator,
        source=hparams["separator_source"],
        savedir=hparams["separator_savedir"],
        device=device,
    )
    if int(baseline.hparams.sample_rate) != rate:
        raise ValueError(
            f"{hparams['separator_source']} runs at {baseline.hparams.sample_rate} Hz but "
            f"sample_rate is {rate} in {hparams_file}: set sample_rate to the separator's rate."
        )
    enrol = enrolment_signals(
        enrol_csv=hparams["enrol_csv"],
        enrol_data_folder=hparams["enrol_data_folder"],
        speakers=mixture_speakers(hparams["test_csv"]),
        sample_rate=speaker_rate,
    )
    encoder = hparams["speaker_encoder"].to(device).eval()
    classifier = hparams["classifier"].to(device).eval()
    chunk_seconds = hparams["speaker_chunk_seconds"]
    if hparams["speaker_source"] is not None:
        speaker_model = load_on_every_rank(
            load_speaker_interface,
            source=hparams["speaker_source"],
            savedir=hparams["speaker_savedir"],
            device=device,
        )
        if int(speaker_model.hparams.sample_rate) != speaker_rate:
            raise ValueError(
                f"{hparams['speaker_source']} runs at {speaker_model.hparams.sample_rate} Hz but "
                f"speaker_sample_rate is {speaker_rate} in {hparams_file}."
            )
        baseline_identifiers = {hparams["speaker_tag"]: interface_identifier(speaker_model, enrol)}
    else:  # the joint branch started from the base model: that (LoRA off, no head) is the baseline
        baseline_identifiers = {
            "pretrained": module_identifier(encoder, enrol, chunk_seconds, speaker_rate)
        }
    joint_identifier = module_identifier(
        encoder, enrol, chunk_seconds, speaker_rate, classifier, label_encoder
    )
    modules = hparams["modules"]
    separator_tag = hparams["separator_tag"]  # the baseline separator's name in the results
    systems = {
        separator_tag: (baseline.separate_batch, baseline.mods, baseline_identifiers),
        "joint model": (
            partial(
                separate_with_modules,
                *(modules[k] for k in SEPARATOR_MODULES),
                num_spks=hparams["num_spks"],
            ),
            torch.nn.ModuleDict({k: modules[k] for k in SEPARATOR_MODULES}),
            {"joint": joint_identifier},
        ),
    }
    dataset, corpus_rate = mixture_dataset(
        hparams["test_csv"], hparams["mixture_folder"], rate, speaker_rate
    )
    log_rates(corpus_rate, rate, "the separators")
    out = Path(hparams["eval_folder"])
    reports = {}
    for name, (separate_batch, mods, identifiers) in systems.items():
        brain = SeparationEvalBrain(modules={"separator": mods}, hparams=hparams, run_opts=run_opts)
        brain.configure(
            separate_batch,
            rate,
            out / name.replace(" ", "_"),
            identifiers,
            speaker_rate,
        )
        brain.modules.eval()
        brain.evaluate(dataset, test_loader_kwargs=hparams["eval_dataloader_opts"])
        reports[name] = brain.report if if_main_process() else None

    if if_main_process():
        command = " ".join(["python", *sys.argv])
        result = {"command": command, "hparams_file": hparams_file, "systems": reports}
        write_atomic(out / "metrics.json", json.dumps(result, indent=2))
        summaries = {"mixture (unprocessed)": reports[separator_tag]["mixture"]}
        summaries.update({name: r["separation"] for name, r in reports.items()})
        speaker = {
            f"{system}: {model}": value
            for system, r in reports.items()
            for model, value in r["speaker_identification"].items()
        }
        table = separation_results_table(summaries, speaker, rate, command)
        write_atomic(out / "results.md", table)
        logger.info("Results (%s):\n%s", out / "metrics.json", table)

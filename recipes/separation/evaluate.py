#!/usr/bin/env python3
"""Separates two-speaker mixtures with a pretrained SpeechBrain separator, scores the separation
and identifies the speaker of each separated output.

Separation metrics, all at the separator's sample rate (mixture and references resampled to it
once) and permutation invariant: SI-SDR and SI-SDRi (best permutation), SDR/SIR/SAR (BSS-eval v3,
both estimates against both references, SIR-maximising permutation) and SDRi, PESQ (narrow-band
at 8 kHz, wide-band at 16 kHz) and STOI. The unprocessed mixture is scored the same way.

Speaker identity: each separated output is resampled to the speaker model's rate and its speaker
predicted by cosine to enrolment centroids and by the classifier head of the speaker model, which
is loaded the way users load it (``foreign_class``) from ``--speaker_source``: a folder written by
``pretrained_interfaces/export.py`` or its Hub id. Each output's reference label is the speaker of the reference source that the
SI-SDR permutation assigned to it. The clean sources and the raw mixture give the upper and lower
bounds.

To run::

    python data_prep/make_mixtures.py \\
        --manifest results/wavlm-lora-arcface/1986/prep/iden_test.csv \\
        --data_folder /data/voxceleb2 --save_folder /data/mix --n_train 0 --n_valid 0 \\
        --n_test 200 --train_speakers 50 --valid_speakers 0 --test_speakers 50
    python pretrained_interfaces/export.py results/wavlm-lora-arcface/1986 --out exported/spk
    python recipes/separation/evaluate.py hparams/separation-eval.yaml --data_folder /data/mix \\
        --speaker_source exported/spk --enrol_csv results/wavlm-lora-arcface/1986/prep/iden_enrol.csv \\
        --enrol_data_folder /data/voxceleb2

Methods: SepFormer (Subakan et al., ICASSP 2021), SI-SDR (Le Roux et al., ICASSP 2019),
BSS-eval (Vincent et al., 2006), PESQ (ITU-T P.862), STOI (Taal et al., 2011).
"""

import json
import sys
from pathlib import Path

from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from sepid.data.manifest import write_atomic
from sepid.report.tables import separation_results_table
from sepid.separation.data import (
    enrolment_signals,
    log_rates,
    mixture_dataset,
    mixture_speakers,
)
from sepid.separation.evaluation import SeparationEvalBrain
from sepid.separation.separator import interface_identifier, load_separator
from sepid.speaker.source import load_speaker_interface
from sepid.training.distributed import load_on_every_rank
from sepid.training.experiment import start_experiment

logger = get_logger(__name__)


if __name__ == "__main__":
    hparams_file, run_opts, overrides, hparams = start_experiment(sys.argv[1:])
    device = run_opts.get("device", "cpu")
    separator = load_on_every_rank(
        load_separator,
        source=hparams["separator_source"],
        savedir=hparams["separator_savedir"],
        device=device,
    )
    separator_rate = int(separator.hparams.sample_rate)

    identifiers, speaker_rate = {}, None
    if hparams["speaker_source"] is not None:
        model = load_on_every_rank(
            load_speaker_interface,
            source=hparams["speaker_source"],
            savedir=hparams["speaker_savedir"],
            device=device,
        )
        speaker_rate = int(model.hparams.sample_rate)
        enrol = enrolment_signals(
            enrol_csv=hparams["enrol_csv"],
            enrol_data_folder=hparams["enrol_data_folder"],
            speakers=mixture_speakers(hparams["test_csv"]),
            sample_rate=speaker_rate,
        )
        identifiers = {hparams["speaker_tag"]: interface_identifier(model, enrol)}
    else:
        logger.warning("No --speaker_source: separation metrics only, no speaker identification.")

    dataset, corpus_rate = mixture_dataset(
        hparams["test_csv"], hparams["data_folder"], separator_rate, speaker_rate
    )
    log_rates(corpus_rate, separator_rate, hparams["separator_source"])
    brain = SeparationEvalBrain(
        modules={"separator": separator.mods}, hparams=hparams, run_opts=run_opts
    )
    brain.configure(
        separator.separate_batch,
        separator_rate,
        hparams["eval_folder"],
        identifiers,
        speaker_rate,
    )
    brain.evaluate(dataset, test_loader_kwargs=hparams["eval_dataloader_opts"])

    if if_main_process():
        command = " ".join(["python", *sys.argv])
        result = {
            "command": command,
            "hparams_file": hparams_file,
            "separator": str(hparams["separator_source"]),
            "speaker_source": hparams["speaker_source"],
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

#!/usr/bin/env python3
"""Evaluates speaker models side by side on the same trials and sets: the pretrained base model,
the trained model (this run's best checkpoint, or an exported folder / Hub id given as
``speaker_source``) and, with ``baseline_source``, a stock SpeechBrain ``EncoderClassifier`` such
as ``speechbrain/spkrec-ecapa-voxceleb``.

Verification (e.g. VoxCeleb1-O): EER, minDCF (NIST-normalised) at p_target 0.01 and 0.05, TAR at
FAR 1% and 0.1%, verification accuracy at the EER threshold, with cosine scoring and, given a
cohort manifest, AS-norm. Identification: top-1/top-5 accuracy by cosine to per-speaker enrolment
centroids, on the evaluation corpus (unseen speakers) and on held-out utterances of the training
speakers, where the ArcFace classifier head's accuracy is reported too.

Each distinct utterance is embedded once (batched by length, long files in chunks) and the
embeddings are cached on disk; a rerun only embeds what is missing.

To run::

    python recipes/speaker/evaluate.py hparams/wavlm-lora-arcface.yaml \\
        --data_folder /data/voxceleb2 --eval_data_folder /data/voxceleb1 \\
        --verification_file /data/voxceleb1/veri_test2.txt

Add ``--pretrained_only=True`` to evaluate only the base model (mean-pooled WavLM hidden states,
no LoRA, no head), the baseline of the reference system. Other sources (each loaded as its users
load it, through ``from_hparams`` / ``foreign_class``)::

    # an exported model (pretrained_interfaces/export.py) or its Hub repo instead of the checkpoint
    python recipes/speaker/evaluate.py hparams/wavlm-lora-arcface.yaml ... \
        --speaker_source exported/spk
    # and ECAPA-TDNN as a baseline in the same tables
    python recipes/speaker/evaluate.py hparams/wavlm-lora-arcface.yaml ... \
        --baseline_source speechbrain/spkrec-ecapa-voxceleb

The models are tagged ``pretrained``, ``finetuned`` (this run's checkpoint), ``exported``
(``speaker_source``), ``baseline`` and, with ``--fbank_baseline=True``, ``fbank`` (mean and
standard deviation of log-mel filterbanks, no training) in ``metrics.json``, the score CSVs and
the tables. A set that cannot be scored (e.g. no identification test utterance when every speaker has one
utterance) is skipped with a log line.
"""

import json
import sys
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.distributed import (
    if_main_process,
    run_on_main,
)
from speechbrain.utils.logger import get_logger

from sepid.data.dataio import full_pipeline, load_label_encoder
from sepid.data.manifest import write_atomic
from sepid.data.schema import LABEL_ENCODER_FILE, VERI_TRIALS_CSV
from sepid.report.tables import speaker_results_table
from sepid.speaker.encoder import embed_in_chunks, set_classifier_outputs
from sepid.speaker.evaluation import (
    IdentificationSet,
    SpeakerModel,
    VerificationSet,
    compare_models,
    drop_empty_sets,
    identification_report,
    interface_embedder,
    load_encoder_classifier,
    load_speaker_interface,
    resolve_rows,
    source_fingerprint,
    trial_bootstrap,
    unique_utterances,
    verification_report,
    write_trial_scores,
)
from sepid.speaker.scoring import EmbeddingTable
from sepid.training.distributed import gather_objects, load_on_every_rank, shard
from sepid.training.experiment import start_experiment

logger = get_logger(__name__)


class EmbeddingBrain(sb.Brain):
    """Embeds utterances with the model being evaluated (``self.embed_fn``, set by :meth:`embed`);
    ``on_stage_end(TEST)`` turns them into an ``EmbeddingTable``."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        return self.embed_fn(wavs, wav_lens)

    def encoder_embedder(self, pretrained_only):
        """``embed(wavs, wav_lens)`` of this run's encoder (long utterances in chunks)."""
        chunk = int(self.hparams.eval_chunk_seconds * self.hparams.sample_rate)

        def embed(wavs, wav_lens):
            return embed_in_chunks(
                self.modules.encoder, wavs, wav_lens, chunk, pretrained_only=pretrained_only
            )

        return embed

    def compute_objectives(self, predictions, batch, stage):
        self.keys.extend(batch.id)
        self.embeddings.append(predictions.detach().float().cpu())
        # Embedding has no objective; the Brain's evaluate loop still averages a stage loss.
        return torch.zeros((), device=self.device)

    def on_evaluate_start(self, max_key=None, min_key=None):
        # The caller recovers the checkpoint it evaluates explicitly (the baseline needs none).
        pass

    def on_stage_start(self, stage, epoch=None):
        self.keys, self.embeddings = [], []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        keys, embs = [], []
        for k, e in gather_objects((self.keys, self.embeddings)):
            keys.extend(k)
            embs.extend(e)
        self.table = EmbeddingTable(keys, torch.cat(embs)) if keys else None

    def embed(self, dataset, cache_path, fingerprint, embed_fn):
        """Embeddings of every utterance in ``dataset`` by ``embed_fn(wavs, wav_lens)``, reusing
        the on-disk cache when it was written by the same model (``fingerprint``)."""
        self.embed_fn = embed_fn
        cached = None
        if cache_path.is_file():
            cached = EmbeddingTable.load(cache_path, fingerprint=fingerprint)
        missing = [k for k in dataset.data_ids if cached is None or k not in cached]
        logger.info(
            "%s: %d utterances, %d cached, %d to embed",
            fingerprint,
            len(dataset.data_ids),
            len(dataset.data_ids) - len(missing),
            len(missing),
        )
        if not missing:
            return cached
        mine = set(shard(missing))  # each rank embeds its share; gathered at stage end
        todo = dataset.filtered_sorted(key_test={"id": lambda k: k in mine})
        todo.add_dynamic_item(full_pipeline(self.hparams.sample_rate))
        todo.set_output_keys(["id", "sig"])
        self.evaluate(todo, test_loader_kwargs=self.hparams.eval_dataloader_opts)
        table = self.table
        if cached is not None:
            table = EmbeddingTable(
                cached.ids + table.ids, torch.cat([cached.embeddings, table.embeddings])
            )
        if if_main_process():
            table.save(cache_path, fingerprint=fingerprint)
        return table


def evaluation_sets(hparams, label_encoder):
    """The verification and identification sets this run can build from the prepared data (an
    empty one is skipped with a log line)."""
    vsets, isets = [], []
    eval_prep = Path(hparams["eval_prep_folder"])
    if hparams["eval_data_folder"] is not None:
        if (eval_prep / VERI_TRIALS_CSV).is_file():
            vsets.append(
                VerificationSet.from_prep("verification", eval_prep, hparams["eval_data_folder"])
            )
        isets.append(
            IdentificationSet.from_prep("eval_speakers", eval_prep, hparams["eval_data_folder"])
        )
    isets.append(
        IdentificationSet.from_prep(
            "train_speakers",
            hparams["prep_folder"],
            hparams["data_folder"],
            closed_set=True,  # a classifier trained on these speakers is scored on them too
            label_encoder=label_encoder,
        )
    )
    vsets, isets = drop_empty_sets(vsets), drop_empty_sets(isets)
    if not vsets and not isets:
        raise ValueError(
            f"Nothing to evaluate: no verification trials and no identification set with test "
            f"utterances in {hparams['prep_folder']} or {eval_prep} (see the warnings above)."
        )
    return vsets, isets


if __name__ == "__main__":
    hparams_file, run_opts, overrides, hparams = start_experiment(sys.argv[1:])
    run_on_main(hparams["prepare_data"])
    if hparams["eval_data_folder"] is not None:
        run_on_main(hparams["prepare_eval_data"])
    else:
        logger.warning(
            "eval_data_folder is not set: only the training speakers' held-out utterances are "
            "evaluated. Pass --eval_data_folder /data/voxceleb1 --verification_file "
            "/data/voxceleb1/veri_test2.txt for VoxCeleb1-O."
        )

    label_encoder = load_label_encoder(f"{hparams['save_folder']}/{LABEL_ENCODER_FILE}")
    vsets, isets = evaluation_sets(hparams, label_encoder)
    cohort_rows = (
        resolve_rows(hparams["cohort_csv"], hparams["cohort_data_folder"] or hparams["data_folder"])
        if hparams["cohort_csv"]
        else []
    )
    dataset = unique_utterances(
        [v.rows for v in vsets] + [i.enrol + i.test for i in isets] + [cohort_rows]
    )

    brain = EmbeddingBrain(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    # Everything the embeddings depend on besides the weights: a change re-embeds.
    settings = "sr={sample_rate} chunk={eval_chunk_seconds} norm={normalize_waveform}".format(
        **hparams
    )
    savedir = Path(hparams["pretrained_savedir"])

    # Each model is loaded when its turn comes, in this order: the base model's embeddings are
    # taken before the checkpoint (which may hold a fine-tuned backbone) replaces its weights.
    def base_model():
        return SpeakerModel(
            "pretrained",
            brain.encoder_embedder(pretrained_only=True),
            f"pretrained:{hparams['wavlm_source']} {settings}",
        )

    def run_checkpoint():
        ckpt = hparams["checkpointer"].recover_if_possible(min_key="error_rate")
        return SpeakerModel(
            "finetuned",
            brain.encoder_embedder(pretrained_only=False),
            f"finetuned:{ckpt.path.resolve()} {settings}",
            classifier=brain.modules.classifier,
            label_encoder=label_encoder,
        )

    def exported_model():
        source = hparams["speaker_source"]
        where = {"source": source, "savedir": savedir / "speaker_source", "device": brain.device}
        interface = load_on_every_rank(load_speaker_interface, **where)
        logger.info("Evaluating the exported speaker model %s", source)
        return SpeakerModel(
            "exported",
            interface_embedder(interface, hparams["sample_rate"]),
            f"exported:{source_fingerprint(source)} sr={hparams['sample_rate']}",
            classifier=interface.mods.classifier,
            label_encoder=interface.hparams.label_encoder,
        )

    def baseline_model():
        source = hparams["baseline_source"]
        where = {"source": source, "savedir": savedir / "baseline", "device": brain.device}
        interface = load_on_every_rank(load_encoder_classifier, **where)
        logger.info("Evaluating the baseline %s (%s)", source, type(interface).__name__)
        return SpeakerModel(
            "baseline",
            interface_embedder(interface, hparams["sample_rate"]),
            f"baseline:{source_fingerprint(source)} sr={hparams['sample_rate']}",
        )

    def fbank_model():
        embedder = hparams["fbank_embedder"].to(brain.device)
        logger.info("Evaluating the training-free baseline %r", embedder)
        return SpeakerModel("fbank", embedder, f"fbank:{embedder!r} {settings}")

    models = [base_model]
    if hparams["pretrained_only"]:
        pass
    elif hparams["speaker_source"] is not None:
        models.append(exported_model)
    else:
        if (
            label_encoder is None
            or hparams["checkpointer"].find_checkpoint(min_key="error_rate") is None
        ):
            raise FileNotFoundError(
                f"No checkpoint in {hparams['save_folder']}: train first with "
                f"recipes/speaker/train.py {hparams_file} (same overrides), pass "
                "--speaker_source=<exported folder or Hub id>, or --pretrained_only=True to "
                "evaluate the base model alone."
            )
        set_classifier_outputs(hparams["classifier"], len(label_encoder))
        models.append(run_checkpoint)
    if hparams["baseline_source"] is not None:
        models.append(baseline_model)
    if hparams["fbank_baseline"]:
        models.append(fbank_model)

    out = Path(hparams["eval_folder"])
    report, trial_scores = {}, {v.name: {} for v in vsets}
    boots = {  # speaker-bootstrap intervals, the same resamples for every model
        v.name: trial_bootstrap(
            v,
            samples=hparams["bootstrap_samples"],
            seed=hparams["bootstrap_seed"],
            confidence=hparams["bootstrap_confidence"],
            p_targets=hparams["p_targets"],
        )
        for v in vsets
    }
    for load_model in models:
        model = load_model()
        tag = model.tag
        brain.modules.eval()
        table = brain.embed(dataset, out / f"embeddings_{tag}.pt", model.fingerprint, model.embed)
        if not if_main_process():
            continue
        cohort = (
            table.embeddings[table.rows([r["wav"] for r in cohort_rows])] if cohort_rows else None
        )
        model_report = {}
        for vset in vsets:
            metrics, scores = verification_report(
                vset,
                table,
                out,
                tag,
                cohort=cohort,
                top_n=hparams["asnorm_top_n"],
                p_targets=hparams["p_targets"],
                far_targets=hparams["far_targets"],
                bootstrap=boots[vset.name],
            )
            model_report[vset.name] = metrics
            trial_scores[vset.name].update({f"{tag}_{k}": v for k, v in scores.items()})
        for iset in isets:
            model_report[f"identification_{iset.name}"] = identification_report(
                iset,
                table,
                classifier=model.classifier,
                topk=hparams["topk"],
                label_encoder=model.label_encoder,
            )
        report[tag] = model_report

    if if_main_process():
        for vset in vsets:
            write_trial_scores(out / f"scores_{vset.name}.csv", vset, trial_scores[vset.name])
        command = " ".join(["python", *sys.argv])
        result = {"command": command, "hparams_file": hparams_file, "models": report}
        result["comparisons"] = {
            v.name: compare_models(boots[v.name], report, v.name) for v in vsets
        }
        write_atomic(out / "metrics.json", json.dumps(result, indent=2))
        table_md = speaker_results_table(report, command)
        write_atomic(out / "results.md", table_md)
        logger.info("Results (%s):\n%s", out / "metrics.json", table_md)

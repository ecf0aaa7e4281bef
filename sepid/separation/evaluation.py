"""The separation evaluation, shared by ``recipes/separation/evaluate.py`` (a pretrained
separator) and ``recipes/joint/evaluate.py`` (the pretrained separator against the joint model):
a Brain that separates each mixture and identifies the speaker of each output, then scores
everything at the end, metrics on both cores."""

from pathlib import Path

import numpy as np
import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process

from sepid.data.audio import resample
from sepid.report.intervals import check_bootstrap_options, mean_interval
from sepid.separation.metrics.pool import evaluate_many
from sepid.separation.separator import (
    accuracy,
    assigned_labels,
    separate,
    write_separation_outputs,
)
from sepid.training.distributed import gather_objects


class SeparationEvalBrain(sb.Brain):
    """Separates each mixture (``compute_forward``), collects what the metrics need
    (``compute_objectives``) and scores everything at the end (``on_stage_end``)."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        mix, _ = batch.mix_sig
        if mix.shape[0] != 1:
            raise ValueError(
                "The separation evaluation takes one mixture per batch (padding would change what "
                "the separator hears): set eval_dataloader_opts: batch_size: 1."
            )
        chunk = self.hparams.separation_chunk_seconds
        overlap = self.hparams.separation_overlap_seconds
        rate = self.separator_rate
        with torch.no_grad():
            return separate(
                self.separate_batch,
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
        if self.identifiers:
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

    def configure(
        self,
        separate_batch,
        separator_rate,
        out_folder,
        identifiers=None,
        speaker_rate=None,
    ):
        """What to evaluate: ``separate_batch`` (``mix [B, T] -> [B, T, n_src]`` at
        ``separator_rate``), where to write, and the speaker identifiers (name ->
        :class:`sepid.separation.separator.SpeakerIdentifier`) at ``speaker_rate``."""
        self.separate_batch = separate_batch
        self.separator_rate = separator_rate
        self.out_folder = Path(out_folder)
        self.identifiers = identifiers or {}
        self.speaker_rate = speaker_rate
        self.known_speakers = known_speakers(self.identifiers)
        return self

    def on_stage_start(self, stage, epoch=None):
        self.items = []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        # Every rank's share, in mixture-ID order: the rows and the sums over them (hence the
        # metrics files, to the bit) do not depend on how the mixtures were sharded.
        gathered = [i for part in gather_objects(self.items) for i in part]
        items = sorted(gathered, key=lambda i: i["ID"])
        if not if_main_process():
            return
        self.report = score_items(
            items,
            sample_rate=self.separator_rate,
            known_speakers=self.known_speakers,
            out=self.out_folder,
            metrics=self.hparams.separation_metrics,
            metric_jobs=self.hparams.metric_jobs,
            bss_backend=self.hparams.bss_backend,
            bootstrap_samples=self.hparams.bootstrap_samples,
            bootstrap_seed=self.hparams.bootstrap_seed,
            bootstrap_confidence=self.hparams.bootstrap_confidence,
        )


def add_mean_intervals(summary, rows, samples=1000, seed=1986, confidence=0.95):
    """Adds to each metric of ``summary`` (:func:`sepid.separation.metrics.rows.summarize` of
    ``rows``) the bootstrap interval of its mean over the mixtures, ``"interval"``
    (:func:`sepid.report.intervals.mean_interval`: mixtures resampled with replacement,
    percentile interval, numpy seed ``seed``; None when fewer than two mixtures have the value,
    a value is infinite, or ``samples`` is 0). Returns ``summary``."""
    check_bootstrap_options(samples, seed, confidence)
    for key, stats in summary.items():
        stats["interval"] = mean_interval(
            [row.get(key) for row in rows], samples=samples, seed=seed, confidence=confidence
        )
    return summary


def score_items(
    items,
    *,
    sample_rate,
    known_speakers,
    out,
    metrics,
    metric_jobs,
    bss_backend,
    bootstrap_samples=1000,
    bootstrap_seed=1986,
    bootstrap_confidence=0.95,
):
    """Separation metrics, speaker accuracies with permutation-aligned labels, and the same for
    the unprocessed mixture; writes the outputs under ``out`` and returns the report.

    ``items`` are what :class:`SeparationEvalBrain` collects, at ``sample_rate``.
    ``known_speakers[(model, method)]`` is the set of speakers that method can name at all
    (enrolled speakers; the classifier's training speakers): outputs of other speakers are
    excluded from its accuracy and counted. ``metrics`` are the metric groups to compute (e.g.
    ``["si_sdr", "sdr"]``, see :func:`sepid.separation.metrics.rows.evaluate_separation`); the
    summaries hold exactly their keys (see :func:`sepid.separation.separator.separation_keys`).
    ``metric_jobs`` worker processes compute them (see
    :func:`sepid.separation.metrics.pool.evaluate_many`), with the BSS-eval backend
    ``bss_backend`` (``"fast"`` or ``"mir_eval"``). Each mean gets its bootstrap interval over
    mixtures (:func:`add_mean_intervals`; ``bootstrap_samples`` 0: none)."""
    metric_args = dict(
        sample_rate=sample_rate,
        n_jobs=metric_jobs,
        metrics=metrics,
        backend=bss_backend,
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
    summary = write_separation_outputs(out, rows, sample_rate, metrics)
    mixture_summary = write_separation_outputs(out / "mixture", mixture_rows, sample_rate, metrics)
    for stats, scored in ((summary, rows), (mixture_summary, mixture_rows)):
        add_mean_intervals(
            stats,
            scored,
            samples=bootstrap_samples,
            seed=bootstrap_seed,
            confidence=bootstrap_confidence,
        )
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


def known_speakers(identifiers):
    """The speakers each ``(tag, method)`` can name at all: the enrolled speakers by embedding,
    the training speakers of its head by classifier."""
    known = {}
    for tag, identifier in identifiers.items():
        known[(tag, "embedding")] = set(identifier.speakers)
        if identifier.classes is not None:
            known[(tag, "classifier")] = identifier.classes
    return known

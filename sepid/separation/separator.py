"""Separation evaluation shared by ``recipes/separation/evaluate.py`` and the joint recipe: loading
a SpeechBrain separator, separating long mixtures in chunks, identifying the speaker of each
separated output with the labels that the separation permutation assigns, and the reports.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from speechbrain.inference.separation import SepformerSeparation

from sepid.data.manifest import write_csv
from sepid.report.plots import plot_histogram
from sepid.separation.metrics.rows import summarize
from sepid.speaker.encoder import embed_in_chunks

logger = logging.getLogger(__name__)

# The columns of sepid.data.mixtures.MIXTURE_COLUMNS that the evaluation reads.
EVAL_MIXTURE_COLUMNS = ("ID", "duration", "mix_wav", "s1_wav", "s2_wav", "s1_spk", "s2_spk")
SEPARATION_KEYS = ("si_sdr", "si_sdri", "sdr", "sdri", "sir", "sar", "pesq", "stoi")
# The summary keys each metric of sepid.separation.metrics.rows.evaluate_separation gives.
METRIC_KEYS = {
    "si_sdr": ("si_sdr", "si_sdri"),
    "sdr": ("sdr", "sdri", "sir", "sar"),
    "pesq": ("pesq",),
    "stoi": ("stoi",),
}


def separation_keys(metrics):
    """The summary keys of the requested ``metrics`` (e.g. ``["si_sdr"]`` gives ``si_sdr`` and
    ``si_sdri``), in :data:`SEPARATION_KEYS` order."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = sorted(set(metrics) - set(METRIC_KEYS))
    if unknown:
        raise ValueError(
            f"Unknown separation metric(s) {unknown} in separation_metrics; choose from "
            f"{list(METRIC_KEYS)}."
        )
    wanted = {key for m in metrics for key in METRIC_KEYS[m]}
    return tuple(k for k in SEPARATION_KEYS if k in wanted)


def load_separator(source, savedir, device="cpu"):
    """``SepformerSeparation.from_hparams`` (a Hub id or a local folder with ``hyperparams.yaml``
    and the ``encoder``/``masknet``/``decoder`` checkpoints), checking the modules it needs:
    SpeechBrain declares ``MODULES_NEEDED`` but does not enforce it."""
    separator = SepformerSeparation.from_hparams(
        source=str(source), savedir=str(savedir), run_opts={"device": device}
    )
    missing = [m for m in SepformerSeparation.MODULES_NEEDED if m not in separator.mods]
    if missing:
        raise ValueError(
            f"Separator {source} lacks module(s) {missing} in its hyperparams.yaml `modules:`; "
            "use a SpeechBrain SepFormer model (e.g. speechbrain/sepformer-whamr)."
        )
    separator.mods.eval()
    return separator


# >>> chunked separation: torch only (pretrained_interfaces/export.py copies this block into the
# joint model's custom_interface.py, so an exported model chunks exactly as the evaluation does)
def align_to(previous_tail, chunk_head):
    """The order of the chunk's sources ``chunk_head [T, n]`` that best matches the previous
    chunk's ``previous_tail [T, n]`` on their overlap: the permutation with the largest summed
    correlation (identity on ties). A separator's output order is arbitrary per call."""
    from itertools import permutations

    n = previous_tail.shape[1]
    if chunk_head.shape[1] != n:
        raise ValueError(f"Chunks with {n} and {chunk_head.shape[1]} sources cannot be aligned.")
    corr = (previous_tail.T.double() @ chunk_head.double()).cpu()  # [i, j]: <previous i, chunk j>
    best = max(permutations(range(n)), key=lambda p: float(sum(corr[i, p[i]] for i in range(n))))
    return list(best)


def separate_in_chunks(separate_batch, mixtures, chunk_samples=None, overlap_samples=0):
    """Separates ``mixtures [B, T]`` into ``[B, T, n_src]`` with ``separate_batch`` (a
    ``[B, t] -> [B, t, n_src]`` separator), in bounded memory: mixtures longer than
    ``chunk_samples`` are cut into chunks overlapping by ``overlap_samples``; each chunk's sources
    are reordered to match the previous chunk on the overlap (:func:`align_to`, per mixture) and
    cross-faded there. Only the output ``[B, T, n_src]`` grows with ``T``."""
    total = mixtures.shape[1]
    if chunk_samples is None or total <= chunk_samples:
        return separate_batch(mixtures)
    if not 0 <= overlap_samples < chunk_samples:
        raise ValueError(
            f"The overlap ({overlap_samples} samples) must be shorter than the chunk "
            f"({chunk_samples} samples)."
        )
    hop = chunk_samples - overlap_samples
    out, filled = None, 0
    for start in range(0, total, hop):
        stop = min(start + chunk_samples, total)
        est = separate_batch(mixtures[:, start:stop])
        if out is None:
            out = est.new_zeros(est.shape[0], total, est.shape[2])
            out[:, :stop] = est
        else:
            n = min(overlap_samples, filled - start, est.shape[1])
            tails = out[:, start : start + n]
            est = torch.stack([e[:, align_to(o, e[:n])] for o, e in zip(tails, est, strict=True)])
            fade = torch.linspace(0.0, 1.0, n, device=est.device, dtype=est.dtype).unsqueeze(1)
            out[:, start : start + n] = out[:, start : start + n] * (1 - fade) + est[:, :n] * fade
            out[:, start + n : stop] = est[:, n:]
        filled = stop
        if stop == total:
            break
    return out


# <<< chunked separation


def separate(separate_batch, mix, chunk_samples=None, overlap_samples=0):
    """Separates one mixture ``mix [1, T]`` into ``[T, n_src]`` (:func:`separate_in_chunks`)."""
    return separate_in_chunks(separate_batch, mix, chunk_samples, overlap_samples)[0]


@dataclass
class SpeakerPredictions:
    """Top-1 speaker predictions of one speaker model for a list of signals."""

    by_embedding: list
    by_classifier: list  # None entries when the model has no classifier


class SpeakerIdentifier:
    """Predicts speakers by cosine to per-speaker enrolment centroids and, when the model has a
    classifier head, by that head.

    Arguments
    ---------
    embed : callable
        ``wavs [1, T] -> [1, D]`` embeddings at the speaker model's rate (it chunks long inputs);
        e.g. an exported model's ``encode_batch`` (:func:`interface_identifier`).
    enrol_signals : dict
        speaker -> list of 1-D tensors at the speaker model's rate (clean enrolment utterances).
    classify : callable, optional
        ``embeddings [N, D] -> N labels`` (the classifier head's top-1); None: embedding only.
    classes : iterable, optional
        The labels ``classify`` can give (the head's training speakers).
    """

    def __init__(self, embed, enrol_signals, classify=None, classes=None):
        self.embed_batch = embed
        self.classify = classify
        self.classes = None if classify is None else set(classes)
        self.speakers = sorted(enrol_signals)
        centroids = []
        for spk in self.speakers:
            embs = torch.cat([self.embed(sig) for sig in enrol_signals[spk]])
            centroids.append(torch.nn.functional.normalize(embs, dim=1).mean(0))
        self.centroids = torch.nn.functional.normalize(torch.stack(centroids), dim=1)

    @torch.no_grad()
    def embed(self, signal):
        """``[1, D]`` embedding of a 1-D signal at the speaker model's rate."""
        return self.embed_batch(signal.reshape(1, -1)).float().cpu()

    @torch.no_grad()
    def predict(self, signals):
        """Top-1 predictions for a list of 1-D signals."""
        embs = torch.cat([self.embed(s) for s in signals])
        scores = torch.nn.functional.normalize(embs, dim=1) @ self.centroids.T
        by_embedding = [self.speakers[i] for i in scores.argmax(1).tolist()]
        if self.classify is None:
            return SpeakerPredictions(by_embedding, [None] * len(signals))
        return SpeakerPredictions(by_embedding, list(self.classify(embs)))


def head_classifier(classifier, label_encoder):
    """``embeddings [N, D] -> labels``: top-1 of a cosine classifier head."""

    @torch.no_grad()
    def classify(embs):
        device = next(classifier.parameters()).device
        logits = classifier(embs.unsqueeze(1).to(device)).squeeze(1)
        return label_encoder.decode_ndim(logits.argmax(1).cpu().tolist())

    return classify


def interface_identifier(model, enrol_signals):
    """A :class:`SpeakerIdentifier` of an exported speaker model (``WavLMSpeakerInterface``):
    its ``encode_batch`` (chunked at its ``chunk_seconds``) and its classifier head."""
    return SpeakerIdentifier(
        model.encode_batch,
        enrol_signals,
        head_classifier(model.mods.classifier, model.hparams.label_encoder),
        model.hparams.label_encoder.lab2ind,
    )


def module_identifier(
    encoder, enrol_signals, chunk_seconds, sample_rate, classifier=None, label_encoder=None
):
    """A :class:`SpeakerIdentifier` of a recipe's own speaker modules (the joint model's
    branch): ``encoder`` embeds in chunks of ``chunk_seconds``. Without ``classifier`` it is the
    base model's baseline (mean-pooled hidden states with LoRA off: ``pretrained_only``)."""
    chunk = int(chunk_seconds * sample_rate)
    pretrained_only = classifier is None

    def embed(wavs):
        device = next(encoder.parameters()).device
        wavs = wavs.to(device)
        ones = torch.ones(wavs.shape[0], device=device)
        return embed_in_chunks(encoder, wavs, ones, chunk, pretrained_only)

    if classifier is None:
        return SpeakerIdentifier(embed, enrol_signals)
    classify = head_classifier(classifier, label_encoder)
    return SpeakerIdentifier(embed, enrol_signals, classify, label_encoder.lab2ind)


def assigned_labels(perm, reference_speakers):
    """The speaker label of each separated output: output ``perm[i]`` was assigned to reference
    ``i`` by the separation metrics, so it carries reference ``i``'s speaker."""
    labels = [None] * len(perm)
    for ref, out in enumerate(perm):
        labels[out] = reference_speakers[ref]
    return labels


def accuracy(predicted, expected, known=None):
    """Fraction of ``predicted == expected``; entries whose expected label is not in ``known``
    (speakers a classifier never saw) are excluded and counted."""
    pairs = [(p, e) for p, e in zip(predicted, expected, strict=True) if p is not None]
    if known is not None:
        pairs = [(p, e) for p, e in pairs if e in known]
    n = len(pairs)
    return {
        "accuracy": (sum(p == e for p, e in pairs) / n) if n else None,
        "n": n,
        "n_excluded": len(predicted) - n,
    }


def write_separation_outputs(out_folder, rows, sample_rate, metrics=None):
    """Per-mixture CSV (with a mean row), the summary (mean/median/std over defined values, with
    missing counts) and the SI-SDRi histogram (when SI-SDR was computed); returns the summary.

    ``metrics`` are the metrics the rows were computed with (``separation_metrics``, e.g.
    ``["si_sdr"]``): the summary and the CSV cover exactly their keys (:func:`separation_keys`).
    None: the keys of :data:`SEPARATION_KEYS` that the rows hold."""
    out_folder = Path(out_folder)
    if metrics is None:
        keys = tuple(k for k in SEPARATION_KEYS if any(k in r for r in rows))
    else:
        keys = separation_keys(metrics)
    summary = summarize(rows, keys)
    columns = ["ID", *keys]
    columns += sorted({k for r in rows for k in r if k.endswith(("_s1", "_s2"))})
    columns += [k for k in rows[0] if k.startswith(("spk_", "pred_"))] if rows else []
    columns += ["perm", "failed"]
    table = []
    for row in rows:
        table.append({c: _cell(row.get(c)) for c in columns})
    table.append({"ID": "mean", **{k: _cell(v["mean"]) for k, v in summary.items()}})
    write_csv(out_folder / "per_mixture.csv", table, columns)
    values = [r["si_sdri"] for r in rows if r.get("si_sdri") is not None]
    if values:
        plot_histogram(
            np.asarray(values),
            out_folder / "si_sdri_hist.png",
            xlabel=f"SI-SDRi (dB) at {sample_rate} Hz",
        )
    return summary


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return value

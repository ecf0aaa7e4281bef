"""Speaker evaluation sets and reports: what ``recipes/speaker/evaluate.py`` (and the joint recipe)
compute from a table of embeddings.

An evaluation draws on several manifests (verification utterances, identification enrolment and
test, for unseen and for training speakers) that share utterances; :func:`unique_utterances` keys
every utterance by its resolved audio path so each is embedded once, whatever set it belongs to.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from sepid.dataio import UTTERANCE_COLUMNS
from sepid.manifest import read_csv, resolve_path, write_csv
from sepid.metrics.verification import verification_metrics
from sepid.plots import plot_det
from sepid.scoring import asnorm_scores, classifier_accuracy, cosine_scores, identification_accuracy

logger = logging.getLogger(__name__)

TRIAL_COLUMNS = ("label", "enrol", "test")


def resolve_rows(csv_path, data_folder):
    """Rows of an utterance manifest with ``wav`` resolved (``$data_root`` -> ``data_folder``)."""
    rows = read_csv(csv_path, UTTERANCE_COLUMNS)
    for row in rows:
        row["wav"] = resolve_path(row["wav"], data_folder)
    return rows


@dataclass
class VerificationSet:
    """Trials (label, enrol id, test id) and the id -> audio path map of their utterances."""

    name: str
    trials: list
    paths: dict
    rows: list = field(repr=False)

    @classmethod
    def from_prep(cls, name, prep_folder, data_folder):
        utts = {r["ID"]: r for r in resolve_rows(Path(prep_folder) / "veri_utts.csv", data_folder)}
        trials_csv = Path(prep_folder) / "veri_trials.csv"
        trials = []
        for i, row in enumerate(read_csv(trials_csv, TRIAL_COLUMNS), start=2):
            for side in ("enrol", "test"):
                if row[side] not in utts:
                    raise ValueError(
                        f"{trials_csv} line {i}: utterance {row[side]!r} is not in "
                        f"{Path(prep_folder) / 'veri_utts.csv'}; rerun data prep."
                    )
            trials.append((int(row["label"]), row["enrol"], row["test"]))
        return cls(name, trials, {k: v["wav"] for k, v in utts.items()}, list(utts.values()))

    def empty_reason(self):
        """Why this set cannot be scored (``None`` when it can)."""
        labels = {label for label, _, _ in self.trials}
        if not self.trials:
            return "no trials"
        if labels != {0, 1}:
            return f"only {'target' if 1 in labels else 'non-target'} trials"
        return None


@dataclass
class IdentificationSet:
    """Enrolment and test utterances of one speaker set; ``closed_set`` when the classifier head
    was trained on these speakers (then its accuracy is reported too)."""

    name: str
    enrol: list
    test: list
    closed_set: bool = False
    label_encoder: object = field(default=None, repr=False)

    @classmethod
    def from_prep(cls, name, prep_folder, data_folder, closed_set=False, label_encoder=None):
        enrol = resolve_rows(Path(prep_folder) / "iden_enrol.csv", data_folder)
        test = resolve_rows(Path(prep_folder) / "iden_test.csv", data_folder)
        return cls(name, enrol, test, closed_set, label_encoder)

    def empty_reason(self):
        """Why this set cannot be scored (``None`` when it can)."""
        if not self.test:
            return "no test utterance (every speaker has too few utterances for one)"
        if not self.enrol:
            return "no enrolment utterance"
        missing = {r["spk_id"] for r in self.test} - {r["spk_id"] for r in self.enrol}
        if missing:
            return f"test speakers without enrolment: {sorted(missing)[:5]}"
        return None


def drop_empty_sets(sets, where=""):
    """The sets that can be scored; each one that cannot is logged with the reason and left out
    (a corpus whose speakers have one utterance each has no identification test set)."""
    kept = []
    for item in sets:
        reason = item.empty_reason()
        if reason is None:
            kept.append(item)
        else:
            logger.warning("Skipping the %r evaluation set%s: %s.", item.name, where, reason)
    return kept


def unique_utterances(row_lists):
    """A ``DynamicItemDataset`` with one entry per distinct audio path (the key), sorted by
    duration so batches hold utterances of similar length."""
    data = {}
    for rows in row_lists:
        for row in rows:
            data.setdefault(row["wav"], {"wav": row["wav"], "duration": float(row["duration"])})
    dataset = DynamicItemDataset(data)
    return dataset.filtered_sorted(sort_key="duration", reverse=True)


def verification_report(vset, table, out_folder, tag, cohort=None, top_n=300, **metric_kwargs):
    """Scores every trial by cosine (and AS-norm with a cohort); returns metrics and the scores."""
    pairs = [(vset.paths[e], vset.paths[t]) for _, e, t in vset.trials]
    labels = torch.tensor([lab for lab, _, _ in vset.trials])
    results = {"cosine": cosine_scores(table, pairs)}
    if cohort is not None:
        results["asnorm"] = asnorm_scores(table, pairs, cohort, top_n=top_n)
    report = {}
    for kind, scores in results.items():
        report[kind] = verification_metrics(scores.numpy(), labels.numpy(), **metric_kwargs)
        plot_det(
            scores.numpy(),
            labels.numpy(),
            Path(out_folder) / f"det_{vset.name}_{tag}_{kind}.png",
            title=f"{vset.name} {tag} ({kind})",
        )
    return report, results


def identification_report(iset, table, classifier=None, topk=(1, 5)):
    """Top-k accuracy by cosine to enrolment centroids, and by the classifier head for closed-set
    speakers when one is given."""
    enrol = table.embeddings[table.rows([r["wav"] for r in iset.enrol])]
    test = table.embeddings[table.rows([r["wav"] for r in iset.test])]
    report = identification_accuracy(
        test,
        [r["spk_id"] for r in iset.test],
        enrol,
        [r["spk_id"] for r in iset.enrol],
        topk=topk,
    )
    report.pop("predictions", None)
    report = {"embedding": report}
    if classifier is not None and iset.closed_set:
        with torch.no_grad():
            logits = classifier(test.unsqueeze(1).to(next(classifier.parameters()).device))
        targets = torch.tensor([iset.label_encoder.encode_label(r["spk_id"]) for r in iset.test])
        report["classifier"] = classifier_accuracy(logits.squeeze(1).cpu(), targets, topk=topk)
    return report


def write_trial_scores(path, vset, scores_by_model):
    """Per-trial CSV: label, enrol, test and one score column per model/scoring."""
    columns = ["label", "enrol", "test", *scores_by_model]
    rows = []
    for i, (label, enrol, test) in enumerate(vset.trials):
        row = {"label": label, "enrol": enrol, "test": test}
        row.update({k: f"{float(v[i]):.6f}" for k, v in scores_by_model.items()})
        rows.append(row)
    write_csv(path, rows, columns)

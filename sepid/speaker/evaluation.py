"""Speaker evaluation sets and reports: what ``recipes/speaker/evaluate.py`` (and the joint recipe)
compute from a table of embeddings.

An evaluation draws on several manifests (verification utterances, identification enrolment and
test, for unseen and for training speakers) that share utterances; :func:`unique_utterances` keys
every utterance by its resolved audio path so each is embedded once, whatever set it belongs to.
"""

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchaudio
from speechbrain.dataio.dataset import DynamicItemDataset

from sepid.data.manifest import read_csv, resolve_path, write_csv
from sepid.data.schema import (
    IDEN_ENROL_CSV,
    IDEN_TEST_CSV,
    TRIAL_COLUMNS,
    UTTERANCE_COLUMNS,
    VERI_TRIALS_CSV,
    VERI_UTTS_CSV,
)
from sepid.report.plots import plot_det
from sepid.speaker.bootstrap import SpeakerBootstrap
from sepid.speaker.metrics import verification_metrics
from sepid.speaker.scoring import (
    asnorm_scores,
    classifier_accuracy,
    cosine_scores,
    identification_accuracy,
)

logger = logging.getLogger(__name__)


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
        utts = {r["ID"]: r for r in resolve_rows(Path(prep_folder) / VERI_UTTS_CSV, data_folder)}
        trials_csv = Path(prep_folder) / VERI_TRIALS_CSV
        trials = []
        for i, row in enumerate(read_csv(trials_csv, TRIAL_COLUMNS), start=2):
            for side in ("enrol", "test"):
                if row[side] not in utts:
                    raise ValueError(
                        f"{trials_csv} line {i}: utterance {row[side]!r} is not in "
                        f"{Path(prep_folder) / VERI_UTTS_CSV}; rerun data prep."
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
        enrol = resolve_rows(Path(prep_folder) / IDEN_ENROL_CSV, data_folder)
        test = resolve_rows(Path(prep_folder) / IDEN_TEST_CSV, data_folder)
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


def trial_bootstrap(vset, samples=1000, seed=1986, confidence=0.95, p_targets=(0.01, 0.05)):
    """The speaker bootstrap of ``vset``'s trials (:class:`sepid.speaker.bootstrap.
    SpeakerBootstrap`: speakers resampled with replacement, a target trial of speaker ``s``
    counted ``c_s`` times, a non-target trial of ``s`` and ``t`` ``c_s * c_t`` times), with the
    speakers of its utterance manifest (``spk_id``)."""
    speaker = {row["ID"]: row["spk_id"] for row in vset.rows}
    return SpeakerBootstrap(
        [speaker[e] for _, e, _ in vset.trials],
        [speaker[t] for _, _, t in vset.trials],
        [label for label, _, _ in vset.trials],
        samples=samples,
        seed=seed,
        confidence=confidence,
        p_targets=p_targets,
    )


def verification_report(
    vset, table, out_folder, tag, cohort=None, top_n=300, bootstrap=None, **metric_kwargs
):
    """Scores every trial by cosine (and AS-norm with a cohort); returns metrics and the scores.

    With ``bootstrap`` (:func:`trial_bootstrap` of ``vset``), each scoring's metrics get
    ``"intervals"``: the speaker-bootstrap interval of the EER and of each minDCF, and its
    resampled values are kept in ``bootstrap.values[(tag, scoring)]`` for
    :func:`compare_models`."""
    pairs = [(vset.paths[e], vset.paths[t]) for _, e, t in vset.trials]
    labels = torch.tensor([lab for lab, _, _ in vset.trials])
    results = {"cosine": cosine_scores(table, pairs)}
    if cohort is not None:
        results["asnorm"] = asnorm_scores(table, pairs, cohort, top_n=top_n)
    report = {}
    for kind, scores in results.items():
        report[kind] = verification_metrics(scores.numpy(), labels.numpy(), **metric_kwargs)
        if bootstrap is not None and bootstrap.samples:
            values = bootstrap.resampled(scores.numpy())
            bootstrap.values[(tag, kind)] = values
            report[kind]["intervals"] = bootstrap.intervals(None, values=values)
        plot_det(
            scores.numpy(),
            labels.numpy(),
            Path(out_folder) / f"det_{vset.name}_{tag}_{kind}.png",
            title=f"{vset.name} {tag} ({kind})",
        )
    return report, results


def compare_models(bootstrap, report, set_name):
    """Paired differences between the models scored on one trial list: for every two models
    ``a``, ``b`` (in ``report``'s order, ``a`` first) and every scoring both have,
    ``{"<a> - <b>": {scoring: {metric: {"difference", "interval"}}}}`` with the point difference
    of the metrics and its paired speaker-bootstrap interval (the same resamples for both, see
    :mod:`sepid.speaker.bootstrap`). ``report[model][set_name][scoring]`` are the metrics;
    ``bootstrap`` the one that :func:`verification_report` filled for ``set_name``."""
    models = [m for m in report if set_name in report[m]]
    out = {}
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            pair = {}
            for scoring in report[a][set_name]:
                if (a, scoring) not in bootstrap.values or (b, scoring) not in bootstrap.values:
                    continue
                intervals = bootstrap.compare(
                    bootstrap.values[(a, scoring)], bootstrap.values[(b, scoring)]
                )
                pair[scoring] = {
                    key: {
                        "difference": report[a][set_name][scoring][key]
                        - report[b][set_name][scoring][key],
                        "interval": interval,
                    }
                    for key, interval in intervals.items()
                }
            if pair:
                out[f"{a} - {b}"] = pair
    return out


def identification_report(iset, table, classifier=None, topk=(1, 5), label_encoder=None):
    """Top-k accuracy by cosine to enrolment centroids, and by the classifier head for closed-set
    speakers when one is given, with its own ``label_encoder`` (default the set's) when that
    knows every test speaker."""
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
    label_encoder = label_encoder or iset.label_encoder
    if classifier is None or not iset.closed_set or label_encoder is None:
        return report
    unknown = {r["spk_id"] for r in iset.test} - set(label_encoder.lab2ind)
    if unknown:
        logger.info(
            "%s: no classifier accuracy, the model's classes lack %d test speaker(s) (e.g. %s)",
            iset.name,
            len(unknown),
            sorted(unknown)[:3],
        )
        return report
    with torch.no_grad():
        logits = classifier(test.unsqueeze(1).to(next(classifier.parameters()).device))
    targets = torch.tensor([label_encoder.encode_label(r["spk_id"]) for r in iset.test])
    report["classifier"] = classifier_accuracy(logits.squeeze(1).cpu(), targets, topk=topk)
    return report


# ------------------------------------------------------------- other speaker sources ---
@dataclass
class SpeakerModel:
    """One model an evaluation scores: ``embed(wavs, wav_lens) -> [B, D]``, the cache key of its
    embeddings, and optionally a classifier head with its label encoder (closed-set accuracy)."""

    tag: str
    embed: object
    fingerprint: str
    classifier: object = None
    label_encoder: object = None


def source_fingerprint(source):
    """What identifies a model source for the embedding cache: a Hub id as such; a local folder
    by its path and the size and modification time of every file in it (a re-export re-embeds)."""
    folder = Path(str(source)).expanduser()
    if not folder.is_dir():
        return str(source)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return f"{folder.resolve()}#{digest.hexdigest()[:16]}"


def load_speaker_interface(source, savedir, device):
    """An exported WavLM speaker model (``pretrained_interfaces/export.py`` output: a folder or a
    Hub id) through its own ``custom_interface.py``, as its users load it."""
    from speechbrain.inference.interfaces import foreign_class

    return foreign_class(
        source=str(source),
        pymodule_file="custom_interface.py",
        classname="WavLMSpeakerInterface",
        savedir=str(savedir),
        run_opts={"device": str(device)},
    )


def load_encoder_classifier(source, savedir, device):
    """A stock SpeechBrain speaker model (``EncoderClassifier``, e.g.
    ``speechbrain/spkrec-ecapa-voxceleb``) from a Hub id or a local copy. A local copy of a Hub
    model names its weights ``<pretrained_path>/<file>`` with the Hub id as ``pretrained_path``;
    for a folder that is set to the folder itself, so a copy loads offline."""
    from speechbrain.inference.speaker import EncoderClassifier

    from sepid.training.experiment import plain_values

    folder = Path(str(source)).expanduser()
    overrides = {}
    if folder.is_dir():
        yaml_file = folder / "hyperparams.yaml"
        if not yaml_file.is_file():
            raise FileNotFoundError(
                f"{yaml_file} not found: baseline_source must be a SpeechBrain model folder "
                "(hyperparams.yaml + weights, e.g. a copy of speechbrain/spkrec-ecapa-voxceleb) "
                "or a Hub id."
            )
        if "pretrained_path" in plain_values(yaml_file):
            overrides["pretrained_path"] = str(folder.resolve())
    return EncoderClassifier.from_hparams(
        source=str(source),
        savedir=str(savedir),
        overrides=overrides,
        run_opts={"device": str(device)},
    )


def interface_embedder(interface, sample_rate):
    """``embed(wavs, wav_lens) -> [B, D]`` through a pretrained interface's ``encode_batch``,
    for audio read at ``sample_rate`` (resampled once here when the model runs at another rate:
    its ``sample_rate`` hyperparameter, else its audio normaliser's)."""
    model_rate = (
        vars(interface.hparams).get("sample_rate") or interface.audio_normalizer.sample_rate
    )
    resample = None
    if int(model_rate) != int(sample_rate):
        logger.info("Resampling from %d Hz to the model's %d Hz", sample_rate, model_rate)
        resample = torchaudio.transforms.Resample(int(sample_rate), int(model_rate))
        resample = resample.to(interface.device)

    def embed(wavs, wav_lens):
        if resample is not None:
            wavs = resample(wavs.to(interface.device))
        with torch.no_grad():
            embeddings = interface.encode_batch(wavs, wav_lens)
        return embeddings.reshape(embeddings.shape[0], -1)

    return embed


def write_trial_scores(path, vset, scores_by_model):
    """Per-trial CSV: label, enrol, test and one score column per model/scoring."""
    columns = ["label", "enrol", "test", *scores_by_model]
    scores = {
        k: torch.as_tensor(v, dtype=torch.float64).tolist() for k, v in scores_by_model.items()
    }

    def rows():  # one at a time: a VoxCeleb1-H list is 550k rows
        for i, (label, enrol, test) in enumerate(vset.trials):
            row = {"label": label, "enrol": enrol, "test": test}
            row.update({k: f"{v[i]:.6f}" for k, v in scores.items()})
            yield row

    write_csv(path, rows(), columns)

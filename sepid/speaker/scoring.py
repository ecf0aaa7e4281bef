"""Cosine scoring of verification trials, adaptive score normalisation and identification accuracy.

Everything here works on L2-normalised float32 embeddings, so a dot product is a cosine
similarity. Trials are scored in chunks so memory stays bounded for VoxCeleb1-E/H sized lists
(550k+ trials).
"""

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from sepid.data.manifest import atomic_open

logger = logging.getLogger(__name__)

__all__ = [
    "EmbeddingTable",
    "asnorm_scores",
    "classifier_accuracy",
    "cosine_scores",
    "identification_accuracy",
]

# Trials scored per step: the step gathers two [chunk, D] blocks and their product (24 MiB at
# D = 512), whatever the list's length; a larger chunk is no faster (the gathers leave the cache).
DEFAULT_CHUNK_SIZE = 4096
# Cohort scores held per step of the AS-norm statistics: COHORT_SCORES_PER_TRIAL * chunk_size
# (4M float32, 16 MiB, by default).
COHORT_SCORES_PER_TRIAL = 1024


def _check_embeddings(embeddings, name):
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(embeddings.shape)}")
    if not torch.isfinite(embeddings).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _l2_normalise(embeddings):
    """float32, L2-normalised rows (zero rows stay zero)."""
    return F.normalize(embeddings.detach().to(torch.float32), p=2, dim=1)


class EmbeddingTable:
    """Utterance id -> L2-normalised float32 embedding.

    Parameters
    ----------
    ids : list of str
        Utterance ids, unique, one per row of ``embeddings``.
    embeddings : torch.Tensor
        ``[N, D]`` embeddings (any float dtype/device; stored as L2-normalised float32 on CPU).

    Raises
    ------
    ValueError
        If the number of ids and rows differ, ids repeat, or embeddings are not finite.
    """

    def __init__(self, ids, embeddings):
        self._init(ids, embeddings, normalise=True)

    def _init(self, ids, embeddings, normalise):
        ids = [str(i) for i in ids]
        _check_embeddings(embeddings, "embeddings")
        if len(ids) != embeddings.shape[0]:
            raise ValueError(
                f"got {len(ids)} ids but {embeddings.shape[0]} embedding rows; they must match"
            )
        index = {}
        duplicates = []
        for row, utt in enumerate(ids):
            if utt in index:
                duplicates.append(utt)
            index[utt] = row
        if duplicates:
            raise ValueError(
                f"{len(duplicates)} duplicated utterance id(s), e.g. {sorted(set(duplicates))[:5]}"
            )
        self._ids = ids
        self._index = index
        if normalise:
            self._embeddings = _l2_normalise(embeddings.cpu())
        else:
            self._embeddings = embeddings.detach().cpu().to(torch.float32)

    @property
    def ids(self):
        """List of utterance ids in row order."""
        return list(self._ids)

    @property
    def embeddings(self):
        """``[N, D]`` L2-normalised float32 embeddings."""
        return self._embeddings

    @property
    def dim(self):
        """Embedding dimension ``D``."""
        return self._embeddings.shape[1]

    def __len__(self):
        return len(self._ids)

    def __contains__(self, utt_id):
        return utt_id in self._index

    def __getitem__(self, utt_id):
        """The ``[D]`` normalised embedding of ``utt_id`` (KeyError if unknown)."""
        return self._embeddings[self._row(utt_id)]

    def _row(self, utt_id):
        try:
            return self._index[utt_id]
        except KeyError:
            raise KeyError(
                f"utterance id {utt_id!r} not found in the embedding table ({len(self)} ids)"
            ) from None

    def rows(self, ids):
        """Row indices of ``ids`` as a LongTensor.

        Raises
        ------
        KeyError
            Naming the first id that is not in the table (and how many are missing).
        """
        index = self._index
        try:
            return torch.tensor([index[i] for i in ids], dtype=torch.long)
        except KeyError:
            missing = [i for i in ids if i not in index]
            raise KeyError(
                f"utterance id {missing[0]!r} not found in the embedding table "
                f"({len(missing)} missing id(s) in total, e.g. {missing[:5]})"
            ) from None

    def save(self, path, fingerprint=None):
        """Saves ``{"ids": [...], "embeddings": Tensor[N, D]}`` (and ``fingerprint``, a name of the
        model that made them, when given) with ``torch.save``, complete or absent
        (:func:`sepid.data.manifest.atomic_open`). Returns the path."""
        path = Path(path)
        data = {"ids": self._ids, "embeddings": self._embeddings}
        if fingerprint is not None:
            data["fingerprint"] = fingerprint
        with atomic_open(path, binary=True) as f:
            torch.save(data, f)
        logger.info("Saved %d embeddings (dim %d) to %s", len(self), self.dim, path)
        return path

    @classmethod
    def load(cls, path, fingerprint=None):
        """Loads a table written by :meth:`save`. With ``fingerprint``: None unless the table was
        saved with the same one (a cache written by another model is not reused)."""
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or "ids" not in data or "embeddings" not in data:
            raise ValueError(
                f"{path} is not an embedding table (expected keys 'ids', 'embeddings')"
            )
        if fingerprint is not None and data.get("fingerprint") != fingerprint:
            return None
        # stored rows are already normalised: keep them bit for bit (normalising again in float32
        # can move the last bit)
        emb = data["embeddings"]
        renormalise = not (
            isinstance(emb, torch.Tensor)
            and emb.dtype == torch.float32
            and emb.dim() == 2
            and torch.allclose(emb.norm(dim=1), torch.ones(emb.shape[0]), atol=1e-5)
        )
        table = cls.__new__(cls)
        table._init(data["ids"], emb, normalise=renormalise)
        return table


def _trial_rows(table, trials):
    """``(enrol_rows, test_rows)`` LongTensors for a list of ``(enrol_id, test_id)`` pairs."""
    trials = list(trials)
    for n, trial in enumerate(trials):
        if len(trial) != 2:
            raise ValueError(f"trial {n} must be an (enrol_id, test_id) pair, got {trial!r}")
    enrol = table.rows([t[0] for t in trials])
    test = table.rows([t[1] for t in trials])
    return enrol, test


def _check_chunk_size(chunk_size):
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def cosine_scores(table, trials, chunk_size=DEFAULT_CHUNK_SIZE):
    """Cosine similarity of every trial.

    Parameters
    ----------
    table : EmbeddingTable
        Embeddings of all enrolment and test utterances.
    trials : iterable of (str, str)
        ``(enrol_id, test_id)`` pairs.
    chunk_size : int
        Trials scored per step; memory is ``O(chunk_size * D)`` (about ``12 * chunk_size * D``
        bytes) plus a float per trial, whatever the number of trials.

    Returns
    -------
    torch.Tensor
        ``[T]`` float32 scores in [-1, 1].

    Raises
    ------
    KeyError
        If a trial names an utterance missing from ``table``.
    """
    chunk_size = _check_chunk_size(chunk_size)
    enrol, test = _trial_rows(table, trials)
    return _cosine_rows(table.embeddings, enrol, test, chunk_size)


def _cosine_rows(emb, enrol, test, chunk_size):
    """Row-wise dot products ``emb[enrol[i]] . emb[test[i]]``, ``chunk_size`` trials at a time."""
    out = torch.empty(enrol.shape[0], dtype=torch.float32)
    for start in range(0, enrol.shape[0], chunk_size):
        stop = start + chunk_size
        out[start:stop] = (emb[enrol[start:stop]] * emb[test[start:stop]]).sum(dim=1)
    return out


def _cohort_stats(embeddings, rows, cohort, top_n, chunk_size):
    """Mean and (population) std of the ``top_n`` highest cohort scores of ``embeddings[rows]``,
    a few rows at a time (the selected rows are gathered per step, never all at once)."""
    rows_per_chunk = max(1, chunk_size * COHORT_SCORES_PER_TRIAL // max(1, cohort.shape[0]))
    means = torch.empty(rows.shape[0], dtype=torch.float32)
    stds = torch.empty(rows.shape[0], dtype=torch.float32)
    for start in range(0, rows.shape[0], rows_per_chunk):
        stop = start + rows_per_chunk
        scores = embeddings[rows[start:stop]] @ cohort.T
        top = torch.topk(scores, k=top_n, dim=1, largest=True, sorted=False).values
        means[start:stop] = top.mean(dim=1)
        stds[start:stop] = top.std(dim=1, unbiased=False)
    return means, stds


def asnorm_scores(table, trials, cohort, top_n=300, chunk_size=DEFAULT_CHUNK_SIZE):
    """Adaptive symmetric score normalisation (AS-norm) of cosine trial scores.

    As in WeSpeaker's ``wespeaker/bin/score_norm.py``: every distinct utterance appearing in the
    trials is scored once against the L2-normalised cohort; the mean ``mu`` and population
    standard deviation ``std`` of its ``top_n`` highest cohort scores are kept; each trial score
    ``s`` becomes::

        0.5 * ((s - mu_enrol) / std_enrol + (s - mu_test) / std_test)

    Parameters
    ----------
    table : EmbeddingTable
        Embeddings of all trial utterances.
    trials : iterable of (str, str)
        ``(enrol_id, test_id)`` pairs.
    cohort : torch.Tensor
        ``[C, D]`` cohort embeddings (normalised here), e.g. speaker means of the training set.
    top_n : int
        Number of highest cohort scores used for the statistics; values above ``C`` are clipped
        to ``C`` with a warning (which is then plain S-norm).
    chunk_size : int
        Bounds memory: trials per scoring step, and about ``1024 * chunk_size`` cohort scores
        held at once (the distinct utterances' embeddings are gathered a step at a time too).

    Returns
    -------
    torch.Tensor
        ``[T]`` float32 normalised scores.

    Raises
    ------
    KeyError
        If a trial names an utterance missing from ``table``.
    ValueError
        If the cohort is not ``[C, D]`` with ``D`` equal to the table's dimension, or the
        effective ``top_n`` is below 2 (the standard deviation of one score is 0).
    """
    chunk_size = _check_chunk_size(chunk_size)
    _check_embeddings(cohort, "cohort")
    if cohort.shape[1] != table.dim:
        raise ValueError(
            f"cohort dimension {cohort.shape[1]} differs from the embedding dimension {table.dim}"
        )
    top_n = int(top_n)
    if top_n > cohort.shape[0]:
        logger.warning(
            "top_n=%d is larger than the cohort (%d embeddings); using top_n=%d",
            top_n,
            cohort.shape[0],
            cohort.shape[0],
        )
        top_n = cohort.shape[0]
    if top_n < 2:
        raise ValueError(f"AS-norm needs top_n >= 2 cohort scores per utterance, got {top_n}")
    cohort = _l2_normalise(cohort.cpu())

    enrol, test = _trial_rows(table, trials)
    raw = _cosine_rows(table.embeddings, enrol, test, chunk_size)
    # statistics once per distinct utterance
    unique_rows, inverse = torch.unique(torch.cat([enrol, test]), return_inverse=True)
    means, stds = _cohort_stats(table.embeddings, unique_rows, cohort, top_n, chunk_size)
    logger.info(
        "AS-norm: %d trials, %d distinct utterances, cohort %d, top_n %d",
        enrol.shape[0],
        unique_rows.shape[0],
        cohort.shape[0],
        top_n,
    )
    n_trials = enrol.shape[0]
    enrol_u, test_u = inverse[:n_trials], inverse[n_trials:]
    return 0.5 * ((raw - means[enrol_u]) / stds[enrol_u] + (raw - means[test_u]) / stds[test_u])


def _check_topk(topk):
    topk = tuple(int(k) for k in topk)
    if not topk or min(topk) < 1:
        raise ValueError(f"topk must be a non-empty sequence of positive integers, got {topk}")
    return topk


def _topk_hits(scores, targets, topk):
    """``{k: number of rows whose target is among the k highest scores}``.

    For ``k`` at or above the number of classes every row is a hit (all classes are retrieved).
    """
    n_classes = scores.shape[1]
    kmax = min(max(topk), n_classes)
    ranked = torch.topk(scores, k=kmax, dim=1).indices  # [N, kmax], best first
    match = ranked == targets.unsqueeze(1)
    hits = {}
    for k in topk:
        hits[k] = scores.shape[0] if k >= n_classes else int(match[:, :k].any(dim=1).sum())
    return hits, ranked[:, 0]


def identification_accuracy(
    test_emb, test_labels, enrol_emb, enrol_labels, topk=(1, 5), chunk_size=4096
):
    """Closed-set speaker identification by cosine scoring against speaker centroids.

    Each speaker's centroid is the mean of its L2-normalised enrolment embeddings, normalised
    again; every test embedding is scored against every centroid and the speakers are ranked.

    Parameters
    ----------
    test_emb : torch.Tensor
        ``[N, D]`` test embeddings.
    test_labels : list of str
        ``N`` true speaker labels; all must occur in ``enrol_labels``.
    enrol_emb : torch.Tensor
        ``[M, D]`` enrolment embeddings.
    enrol_labels : list of str
        ``M`` speaker labels of the enrolment embeddings.
    topk : sequence of int
        Ranks at which the accuracy is reported. When ``k`` is at least the number of enrolled
        speakers ``S`` the accuracy is 1.0 by definition (every speaker is in the top ``k``).
    chunk_size : int
        Test embeddings scored at once.

    Returns
    -------
    dict
        ``{f"top{k}": fraction for each k, "n": N, "n_speakers": S,
        "predictions": [top-1 predicted label per test embedding]}``.

    Raises
    ------
    ValueError
        On shape / length mismatches, or test labels that have no enrolment (named).
    """
    topk = _check_topk(topk)
    chunk_size = _check_chunk_size(chunk_size)
    _check_embeddings(test_emb, "test_emb")
    _check_embeddings(enrol_emb, "enrol_emb")
    test_labels = [str(x) for x in test_labels]
    enrol_labels = [str(x) for x in enrol_labels]
    if len(test_labels) != test_emb.shape[0]:
        raise ValueError(f"{len(test_labels)} test labels for {test_emb.shape[0]} test embeddings")
    if len(enrol_labels) != enrol_emb.shape[0]:
        raise ValueError(
            f"{len(enrol_labels)} enrolment labels for {enrol_emb.shape[0]} enrolment embeddings"
        )
    if test_emb.shape[1] != enrol_emb.shape[1]:
        raise ValueError(
            f"test embedding dimension {test_emb.shape[1]} differs from the enrolment "
            f"dimension {enrol_emb.shape[1]}"
        )
    if test_emb.shape[0] == 0:
        raise ValueError("no test embeddings")
    speakers = sorted(set(enrol_labels))
    spk_index = {spk: i for i, spk in enumerate(speakers)}
    unknown = sorted(set(test_labels) - set(spk_index))
    if unknown:
        raise ValueError(
            f"{len(unknown)} test label(s) have no enrolment embeddings: {unknown[:10]}"
        )

    enrol = _l2_normalise(enrol_emb.cpu())
    enrol_idx = torch.tensor([spk_index[x] for x in enrol_labels], dtype=torch.long)
    centroids = torch.zeros(len(speakers), enrol.shape[1], dtype=torch.float32)
    centroids.index_add_(0, enrol_idx, enrol)
    centroids = F.normalize(centroids, p=2, dim=1)  # the mean's direction = the sum's direction

    test = _l2_normalise(test_emb.cpu())
    targets = torch.tensor([spk_index[x] for x in test_labels], dtype=torch.long)
    hits = dict.fromkeys(topk, 0)
    predictions = []
    for start in range(0, test.shape[0], chunk_size):
        stop = start + chunk_size
        chunk_hits, top1 = _topk_hits(test[start:stop] @ centroids.T, targets[start:stop], topk)
        for k, h in chunk_hits.items():
            hits[k] += h
        predictions.extend(speakers[i] for i in top1.tolist())
    n = test.shape[0]
    out = {f"top{k}": hits[k] / n for k in topk}
    out.update({"n": n, "n_speakers": len(speakers), "predictions": predictions})
    return out


def classifier_accuracy(logits, targets, topk=(1, 5)):
    """Top-k accuracy of a closed-set classifier head.

    Parameters
    ----------
    logits : torch.Tensor
        ``[N, C]`` class scores (logits, log-probabilities or cosines).
    targets : torch.Tensor or sequence of int
        ``[N]`` true class indices in ``[0, C)``.
    topk : sequence of int
        Ranks at which the accuracy is reported; 1.0 by definition when ``k >= C``.

    Returns
    -------
    dict
        ``{f"top{k}": fraction for each k, "n": N, "n_classes": C}``.
    """
    topk = _check_topk(topk)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("logits must be a 2-D torch.Tensor [N, C]")
    targets = torch.as_tensor(targets).reshape(-1).long().cpu()
    logits = logits.detach().cpu()
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"{targets.shape[0]} targets for {logits.shape[0]} rows of logits")
    if logits.shape[0] == 0:
        raise ValueError("no rows in logits")
    n_classes = logits.shape[1]
    if targets.min() < 0 or targets.max() >= n_classes:
        raise ValueError(
            f"targets must be class indices in [0, {n_classes}), got values in "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    hits, _ = _topk_hits(logits, targets, topk)
    n = logits.shape[0]
    out = {f"top{k}": hits[k] / n for k in topk}
    out.update({"n": n, "n_classes": n_classes})
    return out

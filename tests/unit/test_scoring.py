"""Tests of sepid.speaker.scoring: cosine scoring, AS-norm, identification and classifier accuracy."""

import logging

import pytest
import torch
from torch.overrides import TorchFunctionMode

from sepid.speaker.scoring import (
    COHORT_SCORES_PER_TRIAL,
    DEFAULT_CHUNK_SIZE,
    EmbeddingTable,
    asnorm_scores,
    classifier_accuracy,
    cosine_scores,
    identification_accuracy,
)


def _eye_table(scale=3.0):
    """Four utterances on orthogonal axes (scaled: the table must normalise them), plus one at 45
    degrees between the first two."""
    emb = torch.eye(4) * scale
    diag = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    return EmbeddingTable(["a", "b", "c", "d", "ab"], torch.cat([emb, diag]))


# ----------------------------------------------------------------------------- EmbeddingTable


def test_table_normalises_and_indexes():
    table = _eye_table()
    assert len(table) == 5 and table.dim == 4
    assert table.embeddings.dtype == torch.float32
    torch.testing.assert_close(table.embeddings.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(table["c"], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert table.rows(["d", "a", "ab"]).tolist() == [3, 0, 4]
    assert table.rows(["a"]).dtype == torch.long
    assert "a" in table and "zz" not in table


def test_table_missing_id_errors():
    table = _eye_table()
    with pytest.raises(KeyError, match="'zz'"):
        table["zz"]
    with pytest.raises(KeyError, match="'missing_utt'"):
        table.rows(["a", "missing_utt", "b"])
    with pytest.raises(KeyError, match="'nope'"):
        cosine_scores(table, [("a", "b"), ("nope", "a")])


def test_table_bad_construction():
    with pytest.raises(ValueError, match="2 ids but 3"):
        EmbeddingTable(["a", "b"], torch.randn(3, 4))
    with pytest.raises(ValueError, match="duplicated"):
        EmbeddingTable(["a", "a"], torch.randn(2, 4))
    with pytest.raises(ValueError, match="2-D"):
        EmbeddingTable(["a"], torch.randn(4))
    with pytest.raises(ValueError, match="NaN"):
        EmbeddingTable(["a"], torch.tensor([[float("nan"), 1.0]]))


def test_table_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    ids = [f"spk{i}/utt{i}" for i in range(7)]
    table = EmbeddingTable(ids, torch.randn(7, 16, dtype=torch.float64))
    path = table.save(tmp_path / "emb" / "table.pt")
    assert path.is_file()
    loaded = EmbeddingTable.load(path)
    assert loaded.ids == ids
    torch.testing.assert_close(loaded.embeddings, table.embeddings, rtol=0, atol=0)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"ids", "embeddings"}


def test_table_saved_with_a_fingerprint_loads_only_for_that_model(tmp_path):
    """The evaluation's embedding cache: a table made by another model is not reused; the file
    is written whole or not at all (no temporary file left beside it)."""
    table = EmbeddingTable(["a", "b"], torch.eye(2))
    path = table.save(tmp_path / "cache.pt", fingerprint="finetuned@CKPT+1")
    assert EmbeddingTable.load(path, fingerprint="finetuned@CKPT+1").ids == ["a", "b"]
    assert EmbeddingTable.load(path, fingerprint="finetuned@CKPT+2") is None
    assert EmbeddingTable.load(path).ids == ["a", "b"]  # no fingerprint asked: any table
    assert [p.name for p in tmp_path.iterdir()] == ["cache.pt"]


def test_table_load_rejects_other_files(tmp_path):
    torch.save({"foo": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an embedding table"):
        EmbeddingTable.load(tmp_path / "x.pt")


# ------------------------------------------------------------------------------ cosine scores


def test_cosine_scores_known_values():
    table = _eye_table()
    trials = [("a", "a"), ("a", "b"), ("c", "d"), ("a", "ab"), ("ab", "b"), ("d", "d")]
    scores = cosine_scores(table, trials)
    half_sqrt2 = 2**-0.5
    expected = torch.tensor([1.0, 0.0, 0.0, half_sqrt2, half_sqrt2, 1.0])
    torch.testing.assert_close(scores, expected)
    assert scores.dtype == torch.float32


def test_cosine_scores_chunking_matches_dense():
    torch.manual_seed(1)
    ids = [f"u{i}" for i in range(20)]
    emb = torch.randn(20, 8)
    table = EmbeddingTable(ids, emb)
    g = torch.Generator().manual_seed(2)
    pairs = torch.randint(0, 20, (101, 2), generator=g).tolist()
    trials = [(ids[i], ids[j]) for i, j in pairs]
    dense = torch.nn.functional.cosine_similarity(
        emb[[i for i, _ in pairs]], emb[[j for _, j in pairs]]
    )
    torch.testing.assert_close(cosine_scores(table, trials, chunk_size=7), dense)


class _LargestMatrix(TorchFunctionMode):
    """Records the most rows of any 2-D tensor a torch call returns while the mode is on."""

    def __init__(self):
        super().__init__()
        self.rows = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dim() == 2:
            self.rows = max(self.rows, out.shape[0])
        return out


def _random_trials(n_utts, n_trials, dim, seed):
    torch.manual_seed(seed)
    ids = [f"u{i}" for i in range(n_utts)]
    table = EmbeddingTable(ids, torch.randn(n_utts, dim))
    g = torch.Generator().manual_seed(seed + 1)
    pairs = torch.randint(0, n_utts, (n_trials, 2), generator=g).tolist()
    return table, [(ids[i], ids[j]) for i, j in pairs], pairs


@pytest.mark.parametrize("chunk_size", [1, 5, 64, DEFAULT_CHUNK_SIZE, 10_000])
def test_cosine_scores_identical_to_unchunked(chunk_size):
    """Chunking changes memory only: the scores are bit-identical to one gather of all trials."""
    table, trials, pairs = _random_trials(n_utts=50, n_trials=777, dim=32, seed=11)
    emb = table.embeddings
    unchunked = (emb[[i for i, _ in pairs]] * emb[[j for _, j in pairs]]).sum(dim=1)
    assert torch.equal(cosine_scores(table, trials, chunk_size=chunk_size), unchunked)


def test_scoring_never_gathers_more_than_a_chunk():
    """Memory is bounded by the chunk, not the list: no tensor a scoring step makes has more
    rows than ``chunk_size`` trials (cosine) or a step's share of the distinct utterances
    (AS-norm; the cohort itself aside), far fewer than the 2,000 trials over 300 utterances."""
    table, trials, _ = _random_trials(n_utts=300, n_trials=2000, dim=16, seed=12)
    with _LargestMatrix() as seen:
        cosine_scores(table, trials, chunk_size=64)
    assert seen.rows == 64
    cohort = torch.randn(40, 16)
    rows_per_step = 1 * COHORT_SCORES_PER_TRIAL // cohort.shape[0]
    with _LargestMatrix() as seen:
        asnorm_scores(table, trials, cohort, top_n=10, chunk_size=1)
    assert seen.rows <= max(rows_per_step, cohort.shape[0]) < 300


def test_asnorm_identical_for_every_chunk_size():
    """AS-norm statistics computed a few utterances at a time equal the one-step computation."""
    table, trials, _ = _random_trials(n_utts=300, n_trials=2000, dim=16, seed=13)
    cohort = torch.randn(40, 16)
    one_step = asnorm_scores(table, trials, cohort, top_n=10)  # 300 utterances < one step
    for chunk_size in (1, 2, 3, 64):
        assert torch.equal(
            asnorm_scores(table, trials, cohort, top_n=10, chunk_size=chunk_size), one_step
        )


# -------------------------------------------------------------------------------------- AS-norm


def _naive_asnorm(table, trials, cohort, top_n):
    """Per-trial reference, straight from the formula (float64)."""
    cohort = torch.nn.functional.normalize(cohort.double(), dim=1)
    out = []
    for enrol, test in trials:
        e, t = table[enrol].double(), table[test].double()
        s = float(e @ t)
        stats = []
        for x in (e, t):
            top = torch.sort(cohort @ x, descending=True).values[:top_n]
            stats.append((float(top.mean()), float(top.std(unbiased=False))))
        (mu_e, sd_e), (mu_t, sd_t) = stats
        out.append(0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("top_n", [2, 5, 12])
def test_asnorm_matches_naive_reference(top_n):
    torch.manual_seed(3)
    ids = [f"u{i}" for i in range(9)]
    table = EmbeddingTable(ids, torch.randn(9, 6))
    cohort = torch.randn(12, 6) * 5
    g = torch.Generator().manual_seed(4)
    pairs = torch.randint(0, 9, (30, 2), generator=g).tolist()
    trials = [(ids[i], ids[j]) for i, j in pairs]
    ours = asnorm_scores(table, trials, cohort, top_n=top_n, chunk_size=4)
    assert ours.shape == (30,) and ours.dtype == torch.float32
    torch.testing.assert_close(
        ours.double(), _naive_asnorm(table, trials, cohort, top_n), atol=1e-4, rtol=1e-4
    )


def test_asnorm_top_n_larger_than_cohort_warns(caplog):
    torch.manual_seed(5)
    table = EmbeddingTable(["x", "y"], torch.randn(2, 4))
    cohort = torch.randn(6, 4)
    with caplog.at_level(logging.WARNING, logger="sepid.speaker.scoring"):
        ours = asnorm_scores(table, [("x", "y")], cohort, top_n=300)
    assert "larger than the cohort" in caplog.text
    torch.testing.assert_close(ours.double(), _naive_asnorm(table, [("x", "y")], cohort, 6))


def test_asnorm_bad_input():
    table = EmbeddingTable(["x", "y"], torch.randn(2, 4))
    with pytest.raises(ValueError, match="dimension"):
        asnorm_scores(table, [("x", "y")], torch.randn(5, 3))
    with pytest.raises(ValueError, match="top_n >= 2"):
        asnorm_scores(table, [("x", "y")], torch.randn(5, 4), top_n=1)
    with pytest.raises(KeyError, match="'q'"):
        asnorm_scores(table, [("x", "q")], torch.randn(5, 4))


# ------------------------------------------------------------------------------ identification


def test_identification_orthogonal_speakers():
    # Speakers A, B, C live on axes 0, 1, 2; enrolment has two (scaled, noisy) utterances each.
    enrol = torch.tensor(
        [
            [2.0, 0.1, 0.0, 0.0],
            [5.0, -0.1, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.1],
            [0.1, 3.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 4.0, 0.2],
        ]
    )
    enrol_labels = ["A", "A", "B", "B", "C", "C"]
    # test 0 -> A (right), 1 -> B (right), 2 -> C (labelled A: wrong at top-1, right at top-2
    # because its second-best axis is A's), 3 -> B (right)
    test = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 2.0, 0.0, 0.0],
            [0.5, 0.0, 1.0, 0.0],
            [0.1, 0.9, 0.0, 0.0],
        ]
    )
    test_labels = ["A", "B", "A", "B"]
    out = identification_accuracy(test, test_labels, enrol, enrol_labels, topk=(1, 2, 5))
    assert out["predictions"] == ["A", "B", "C", "B"]
    assert out["top1"] == 0.75
    assert out["top2"] == 1.0
    assert out["top5"] == 1.0  # k > number of speakers: 1.0 by definition
    assert out["n"] == 4 and out["n_speakers"] == 3
    assert set(out) == {"top1", "top2", "top5", "n", "n_speakers", "predictions"}


def test_identification_default_keys_and_chunking():
    torch.manual_seed(6)
    centres = torch.nn.functional.normalize(torch.randn(10, 32), dim=1)
    enrol = centres.repeat_interleave(3, 0) + 0.05 * torch.randn(30, 32)
    enrol_labels = [f"s{i}" for i in range(10) for _ in range(3)]
    test = centres + 0.05 * torch.randn(10, 32)
    test_labels = [f"s{i}" for i in range(10)]
    out = identification_accuracy(test, test_labels, enrol, enrol_labels, chunk_size=3)
    assert out["top1"] == 1.0 and out["top5"] == 1.0
    assert out["predictions"] == test_labels


def test_identification_unknown_test_labels():
    enrol = torch.eye(3)
    with pytest.raises(ValueError, match="'Z'"):
        identification_accuracy(torch.eye(3)[:2], ["A", "Z"], enrol, ["A", "B", "C"])
    with pytest.raises(ValueError, match="test labels"):
        identification_accuracy(torch.eye(3), ["A", "B"], enrol, ["A", "B", "C"])


# ---------------------------------------------------------------------------------- classifier


def test_classifier_accuracy():
    logits = torch.tensor(
        [
            [5.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # target 0: top1
            [0.0, 1.0, 5.0, 0.0, 0.0, 0.0, 0.0],  # target 1: second -> top5 only
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],  # target 0: rank 7 -> miss
            [0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0],  # target 3: top1
        ]
    )
    out = classifier_accuracy(logits, torch.tensor([0, 1, 0, 3]))
    assert out == {"top1": 0.5, "top5": 0.75, "n": 4, "n_classes": 7}
    assert classifier_accuracy(logits, [0, 1, 0, 3], topk=(1, 7, 10))["top10"] == 1.0


def test_classifier_accuracy_bad_targets():
    with pytest.raises(ValueError, match="class indices"):
        classifier_accuracy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="targets"):
        classifier_accuracy(torch.zeros(2, 3), torch.tensor([0]))

"""Separation evaluation helpers: labels follow the permutation, chunked separation is stitched
in a consistent source order, accuracy excludes speakers a method cannot name, the summary and
the results table cover exactly the requested metrics."""

import csv

import numpy as np
import pytest
import torch

from sepid.report.comparisons import compare_per_mixture
from sepid.report.tables import separation_results_table
from sepid.separation.evaluation import score_items
from sepid.separation.separator import (
    accuracy,
    align_to,
    assigned_labels,
    separate,
    separation_keys,
)


def test_labels_follow_the_permutation():
    # perm[i] = output assigned to reference i
    assert assigned_labels([0, 1], ["alice", "bob"]) == ["alice", "bob"]
    assert assigned_labels([1, 0], ["alice", "bob"]) == ["bob", "alice"]


def test_swapping_references_swaps_labels():
    refs = ["alice", "bob"]
    perm = [1, 0]
    swapped_refs = refs[::-1]
    swapped_perm = perm[::-1]  # reference 0 is now bob, assigned the output bob had
    assert assigned_labels(perm, refs) == assigned_labels(swapped_perm, swapped_refs)


def fake_separator(sources, swap_every):
    """A 'separator' that returns the true sources of the span it is given, in an order that
    flips from call to call, as a real separator's arbitrary output order may."""
    calls = {"n": 0}
    total = sources.shape[0]

    def separate_batch(mix):
        n = mix.shape[1]
        # locate the span by matching the mixture
        full_mix = sources.sum(1)
        for start in range(total - n + 1):
            if torch.equal(full_mix[start : start + n], mix[0]):
                break
        est = sources[start : start + n]
        calls["n"] += 1
        if calls["n"] % swap_every == 0:
            est = est[:, [1, 0]]
        return est.unsqueeze(0)

    return separate_batch


def test_chunked_separation_keeps_a_consistent_source_order():
    torch.manual_seed(0)
    sources = torch.randn(1000, 2)
    mix = sources.sum(1, keepdim=True).T
    out = separate(
        fake_separator(sources, swap_every=2), mix, chunk_samples=300, overlap_samples=50
    )
    assert out.shape == (1000, 2)
    torch.testing.assert_close(out, sources)


def test_unchunked_separation_is_one_call():
    sources = torch.randn(100, 2)
    out = separate(fake_separator(sources, swap_every=5), sources.sum(1, keepdim=True).T, 300)
    torch.testing.assert_close(out, sources)


def test_align_to_detects_a_swap():
    a = torch.randn(50, 2)
    assert align_to(a, a) == [0, 1]
    assert align_to(a, a[:, [1, 0]]) == [1, 0]


def test_accuracy_excludes_unknown_speakers_and_missing_predictions():
    result = accuracy(["a", "b", "a", None], ["a", "a", "z", "b"], known={"a", "b"})
    # "z" is unknown to the method, None is no prediction: 2 counted, 1 right
    assert result == {"accuracy": 0.5, "n": 2, "n_excluded": 2}


def _items(n=2, length=4000, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        refs = rng.standard_normal((2, length)).astype(np.float32)
        mix = refs.sum(0)
        est = (refs + 0.1 * rng.standard_normal((2, length))).astype(np.float32)[::-1].copy()
        items.append(
            {
                "ID": f"m{i}",
                "estimates": est,
                "references": refs,
                "mixture": mix,
                "speakers": ["alice", "bob"],
                "predictions": {},
            }
        )
    return items


@pytest.mark.parametrize(
    ("metrics", "keys", "columns"),
    [
        (["si_sdr"], ["si_sdr", "si_sdri"], ["SI-SDR", "SI-SDRi"]),
        (["si_sdr", "sdr"], ["si_sdr", "si_sdri", "sdr", "sdri", "sir", "sar"], None),
    ],
)
def test_summary_and_table_cover_the_requested_metrics(tmp_path, metrics, keys, columns):
    report = score_items(
        _items(),
        sample_rate=8000,
        known_speakers={},
        out=tmp_path,
        metrics=metrics,
        metric_jobs=1,
        bss_backend="fast",
    )
    assert list(report["separation"]) == keys
    assert list(report["mixture"]) == keys
    assert report["separation"]["si_sdri"]["mean"] > 10  # the swapped order was undone
    for summary in (report["separation"], report["mixture"]):  # bootstrap over mixtures
        for key in keys:
            interval = summary[key]["interval"]
            if key == "sar" and summary is report["mixture"]:
                continue  # an exact mixture's SAR can be infinite: no interval then
            assert interval["low"] <= summary[key]["mean"] <= interval["high"], key
            assert interval["unit"] == "item" and interval["n_units"] == summary[key]["n"]
            assert interval["samples"] == 1000 and interval["seed"] == 1986
    with open(tmp_path / "per_mixture.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[: 1 + len(keys)] == ["ID", *keys]
    assert not set(header) & ({"sdr", "pesq", "stoi"} - set(keys))
    table = separation_results_table(
        {"mixture": report["mixture"], "sepformer": report["separation"]}, {}, 8000, "cmd"
    )
    header_line = next(line for line in table.splitlines() if line.startswith("| system"))
    names = [c.strip() for c in header_line.strip("|").split("|")][1:]
    assert names == (columns or ["SI-SDR", "SI-SDRi", "SDR", "SDRi", "SIR", "SAR"])
    assert "n/a" not in table
    si_sdri = report["separation"]["si_sdri"]
    low, high = si_sdri["interval"]["low"], si_sdri["interval"]["high"]
    assert f"{si_sdri['mean']:.2f} [{low:.2f}, {high:.2f}]" in table
    assert "95 % bootstrap confidence interval" in table and "mixtures with replacement" in table


def test_paired_comparison_of_two_systems_on_the_same_mixtures(tmp_path):
    items = _items()
    common = dict(
        sample_rate=8000, known_speakers={}, metrics=["si_sdr"], metric_jobs=1, bss_backend="fast"
    )
    score_items(items, out=tmp_path / "a", **common)
    for item in items:  # system b: its estimates with noise added
        rng = np.random.default_rng(0)
        item["estimates"] = item["estimates"] + 0.3 * rng.standard_normal(item["estimates"].shape)
    score_items(items, out=tmp_path / "b", **common)
    comparison = compare_per_mixture(
        tmp_path / "a/per_mixture.csv", tmp_path / "b/per_mixture.csv", ["si_sdri"], samples=200
    )["si_sdri"]
    assert comparison["n"] == len(items) and comparison["difference"] > 0
    assert (
        comparison["interval"]["low"] <= comparison["difference"] <= comparison["interval"]["high"]
    )
    again = compare_per_mixture(
        tmp_path / "a/per_mixture.csv", tmp_path / "b/per_mixture.csv", ["si_sdri"], samples=200
    )
    assert again["si_sdri"] == comparison
    score_items(items[:-1], out=tmp_path / "c", **common)
    with pytest.raises(ValueError, match="different mixtures"):
        compare_per_mixture(
            tmp_path / "a/per_mixture.csv", tmp_path / "c/per_mixture.csv", ["si_sdri"]
        )


def test_no_intervals_with_zero_bootstrap_samples(tmp_path):
    report = score_items(
        _items(),
        sample_rate=8000,
        known_speakers={},
        out=tmp_path,
        metrics=["si_sdr"],
        metric_jobs=1,
        bss_backend="fast",
        bootstrap_samples=0,
    )
    assert report["separation"]["si_sdri"]["interval"] is None


def test_unknown_separation_metric_is_named():
    with pytest.raises(ValueError, match=r"\['sisdr'\].*separation_metrics"):
        separation_keys(["sisdr"])

"""Paired comparisons of two systems from their per-item result tables, light enough for the
demo driver's own process (no torch, no SpeechBrain: it opens nothing outside the repository)."""

from sepid.data.manifest import read_csv
from sepid.report.intervals import paired_mean_interval


def compare_per_mixture(a_csv, b_csv, keys, samples=1000, seed=1986, confidence=0.95):
    """Paired differences ``a - b`` of the per-mixture metrics ``keys`` of two systems on the
    same mixtures (their ``per_mixture.csv``, the ``mean`` row left out), each with its paired
    bootstrap interval over mixtures (:func:`sepid.report.intervals.paired_mean_interval`):
    ``{key: {"difference", "interval", "n"}}``. The two files must list the same mixtures."""
    tables = []
    for path in (a_csv, b_csv):
        rows = {r["ID"]: r for r in read_csv(path, ("ID", *keys)) if r["ID"] != "mean"}
        tables.append(rows)
    if sorted(tables[0]) != sorted(tables[1]):
        raise ValueError(
            f"{a_csv} and {b_csv} hold different mixtures ({len(tables[0])} and "
            f"{len(tables[1])}): a paired comparison needs both systems on the same ones."
        )
    ids = sorted(tables[0])

    def column(table, key):
        return [float(table[i][key]) if table[i][key] != "" else None for i in ids]

    return {
        key: paired_mean_interval(
            column(tables[0], key),
            column(tables[1], key),
            samples=samples,
            seed=seed,
            confidence=confidence,
        )
        for key in keys
    }

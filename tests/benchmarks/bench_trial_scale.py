"""A VoxCeleb1-H sized trial list read, scored and summarised: time and memory of each stage.

Usage::

    python tests/benchmarks/bench_trial_scale.py [--sizes 55089 183631 550894] \\
        [--cohort 5994] [--work /tmp/sepid-trial-scale] \\
        [--out tests/benchmarks/results/trial_scale.json]

For each list size N (VoxCeleb1-H has 550,894 trials; the defaults are a tenth, a third and all
of it) a VoxCeleb1-shaped list is generated: ``label enrol test`` lines with VoxCeleb ids
(``id10001/1zcIwhmdeo4/00001.wav``) drawn from 1,251 speakers and 153,516 utterances (about
123 per speaker, 8 per video), half of the trials target trials, in shuffled order; the smaller
lists are prefixes of the full one. From it the project's manifests are written as data prep
writes them (``veri_trials.csv``: label, enrol, test ids; ``veri_utts.csv``: every utterance the
list names, with its ``$data_root`` path), and a random L2-normalised 512-d embedding table of
those utterances stands in for the embeddings (keyed by resolved path, as
``recipes/speaker/evaluate.py`` keys them). Then everything the evaluation does after embedding
is run and measured stage by stage (reading the raw list is data prep's, measured at 550k
trials by ``bench_prep_scale.py``):

1. ``read_manifests``: ``VerificationSet.from_prep`` (both CSVs, every trial checked);
2. ``pairs_labels``: the trial id -> path pairs and the label tensor ``verification_report``
   builds;
3. ``cosine``: ``cosine_scores`` (rows looked up, scored in chunks);
4. ``asnorm``: ``asnorm_scores`` with a cohort of ``--cohort`` embeddings (5,994: VoxCeleb2's
   speaker count, the usual speaker-mean cohort) and top_n 300 (the recipe's default);
5. ``metrics``: ``verification_metrics`` (EER, minDCF at 0.01 and 0.05, TAR at FAR 1% and 0.1%);
6. ``plot_det``: the DET plot ``verification_report`` writes per scoring;
7. ``verification_report``: the whole call as ``evaluate.py`` makes it (cosine, AS-norm, metrics,
   DET plots), for the total;
8. ``write_trial_scores``: the per-trial ``scores_<set>.csv`` (cosine and AS-norm columns).

Memory, two ways, for each stage separately: the peak resident set size during the stage minus
the resident size just before it (Linux: the ``VmHWM`` high-water mark is reset through
``/proc/self/clear_refs`` before each stage, so every stage gets its own peak), and the
``tracemalloc`` peak of a second, traced run (Python objects and numpy buffers; torch's tensor
allocations are not traced, the RSS peak sees them; glibc is told to mmap every block over
128 KiB and to return free heap pages before each stage, so memory an earlier stage freed does
not hide a later stage's allocations). Wall time is the untraced run's
(``time.perf_counter``). ``retained_mib`` is what the stage's result keeps resident. The
embedding table and inputs are built before any stage and are not counted; ``bytes_per_trial``
divides each stage's RSS peak by N, and ``growth_exponent`` fits peak ~ N^k over the sizes
(1 = linear; per-trial Python objects and float arrays are linear, a trials x trials or a
trials x dim matrix would show as a jump).
"""

import argparse
import ctypes
import ctypes.util
import gc
import re
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from bench_common import REPO, write_result  # sibling module (the script folder is on sys.path)

from sepid.data.manifest import DATA_ROOT, write_csv
from sepid.report.plots import plot_det
from sepid.speaker.evaluation import (  # the columns: as the evaluation reads them
    TRIAL_COLUMNS,
    UTTERANCE_COLUMNS,
    VerificationSet,
    verification_report,
    write_trial_scores,
)
from sepid.speaker.metrics import verification_metrics
from sepid.speaker.scoring import EmbeddingTable, asnorm_scores, cosine_scores

MIB = 1024 * 1024
VOXCELEB1_H_TRIALS = 550_894
VOXCELEB1_SPEAKERS = 1_251
VOXCELEB1_UTTERANCES = 153_516
UTTS_PER_VIDEO = 8
EMBEDDING_DIM = 512
ASNORM_TOP_N = 300
ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


# ------------------------------------------------------------------------------ memory ---
def _status_mib(field):
    """A ``VmRSS`` / ``VmHWM`` line of ``/proc/self/status`` in MiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        match = re.search(rf"^{field}:\s+(\d+) kB", fh.read(), flags=re.MULTILINE)
    return int(match.group(1)) / 1024


GLIBC = ctypes.CDLL(ctypes.util.find_library("c"))
M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


def _fresh_heap():
    """Large blocks always mmap'd (freed straight back to the OS) and free heap pages returned,
    so memory an earlier stage freed does not hide the next stage's allocations from the RSS."""
    GLIBC.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    GLIBC.malloc_trim(0)


def _reset_peak_rss():
    """Resets the process's resident high-water mark (Linux >= 4.0) to the current RSS."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def measure(fn):
    """Runs ``fn`` twice: untraced (wall time, RSS peak above the RSS before it, RSS kept by its
    result) and under tracemalloc (traced peak). Returns ``(result, stats)``."""
    gc.collect()
    _fresh_heap()
    before = _status_mib("VmRSS")
    _reset_peak_rss()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    peak = _status_mib("VmHWM")
    gc.collect()
    _fresh_heap()
    retained = _status_mib("VmRSS") - before
    tracemalloc.start()
    fn()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    stats = {
        "seconds": seconds,
        "peak_rss_above_start_mib": peak - before,
        "tracemalloc_peak_mib": traced_peak / MIB,
        "retained_mib": retained,
    }
    return result, stats


# ---------------------------------------------------------------------------- the data ---
def voxceleb1_utterances(rng):
    """``(speaker index, "idXXXXX/<video>/<nnnnn>.wav")`` of a VoxCeleb1-shaped corpus."""
    per_speaker = np.full(VOXCELEB1_SPEAKERS, VOXCELEB1_UTTERANCES // VOXCELEB1_SPEAKERS)
    per_speaker[: VOXCELEB1_UTTERANCES - per_speaker.sum()] += 1
    n_videos = int((-(-per_speaker // UTTS_PER_VIDEO)).sum())
    videos = ["".join(v) for v in rng.choice(ID_ALPHABET, size=(n_videos, 11))]
    speakers, names = [], []
    video = 0
    for spk, count in enumerate(per_speaker.tolist()):
        for i in range(count):
            if i and i % UTTS_PER_VIDEO == 0:
                video += 1
            speakers.append(spk)
            names.append(f"id{10001 + spk}/{videos[video]}/{i % UTTS_PER_VIDEO + 1:05d}.wav")
        video += 1
    return np.array(speakers), names


def voxceleb1h_trials(rng, speakers, n_trials):
    """``(labels, enrol, test)`` index arrays: half target trials (same speaker, another
    utterance), half non-target trials (another speaker), shuffled."""
    order = np.argsort(speakers, kind="stable")
    first = np.searchsorted(speakers[order], np.arange(VOXCELEB1_SPEAKERS))
    count = np.bincount(speakers, minlength=VOXCELEB1_SPEAKERS)
    enrol = rng.integers(0, speakers.shape[0], size=n_trials)
    labels = rng.random(n_trials) < 0.5
    spk = speakers[enrol]
    # target: another utterance of the same speaker
    offset = rng.integers(1, count[spk])
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0]) - first[speakers[order]]
    same = order[first[spk] + (rank[enrol] + offset) % count[spk]]
    # non-target: any utterance of another speaker
    other_spk = (spk + rng.integers(1, VOXCELEB1_SPEAKERS, size=n_trials)) % VOXCELEB1_SPEAKERS
    other = order[first[other_spk] + rng.integers(0, count[other_spk])]
    test = np.where(labels, same, other)
    return labels.astype(np.int64), enrol, test


def write_inputs(folder, names, labels, enrol, test):
    """The raw list and the project's manifests (as data prep writes them) for one list size;
    returns the ids of the utterances the list names, in ``veri_utts.csv`` order."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "veri_list.txt", "w", encoding="utf-8") as fh:
        fh.writelines(
            f"{lab} {names[e]} {names[t]}\n"
            for lab, e, t in zip(labels.tolist(), enrol.tolist(), test.tolist(), strict=True)
        )

    def utt_id(index):
        return names[index].removesuffix(".wav").replace("/", "--")

    write_csv(
        folder / "veri_trials.csv",
        [
            {"label": lab, "enrol": utt_id(e), "test": utt_id(t)}
            for lab, e, t in zip(labels.tolist(), enrol.tolist(), test.tolist(), strict=True)
        ],
        TRIAL_COLUMNS,
    )
    named = np.unique(np.concatenate([enrol, test])).tolist()
    write_csv(
        folder / "veri_utts.csv",
        [
            {
                "ID": utt_id(i),
                "duration": "8.2",
                "wav": f"{DATA_ROOT}/wav/{names[i]}",
                "spk_id": names[i].split("/")[0],
            }
            for i in named
        ],
        UTTERANCE_COLUMNS,
    )
    return named


def exponent(sizes, values):
    """``k`` of ``value ~ size^k`` (least squares in log-log); None if a value is not positive."""
    if len(sizes) < 2 or min(values) <= 0:
        return None
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


# ------------------------------------------------------------------------------ stages ---
def run_size(folder, data_folder, n_utts_named, cohort, seed):
    """Every stage on the list in ``folder``; returns the row of the result."""
    gen = torch.Generator().manual_seed(seed)
    vset = VerificationSet.from_prep("verification", folder, data_folder)
    table = EmbeddingTable(
        list(vset.paths.values()), torch.randn(n_utts_named, EMBEDDING_DIM, generator=gen)
    )
    n_trials = len(vset.trials)
    del vset
    stages = {}

    vset, stages["read_manifests"] = measure(
        lambda: VerificationSet.from_prep("verification", folder, data_folder)
    )

    def pairs_labels():
        pairs = [(vset.paths[e], vset.paths[t]) for _, e, t in vset.trials]
        labels = torch.tensor([lab for lab, _, _ in vset.trials])
        return pairs, labels

    (pairs, labels), stages["pairs_labels"] = measure(pairs_labels)
    cos, stages["cosine"] = measure(lambda: cosine_scores(table, pairs))
    asn, stages["asnorm"] = measure(lambda: asnorm_scores(table, pairs, cohort, top_n=ASNORM_TOP_N))
    metrics, stages["metrics"] = measure(lambda: verification_metrics(cos.numpy(), labels.numpy()))
    _, stages["plot_det"] = measure(
        lambda: plot_det(cos.numpy(), labels.numpy(), folder / "det.png", title="cosine")
    )
    (report, scores), stages["verification_report"] = measure(
        lambda: verification_report(vset, table, folder, "bench", cohort=cohort, top_n=ASNORM_TOP_N)
    )
    scores_by_model = {f"bench_{kind}": values for kind, values in scores.items()}
    _, stages["write_trial_scores"] = measure(
        lambda: write_trial_scores(folder / "scores_verification.csv", vset, scores_by_model)
    )
    for stage in stages.values():
        stage["bytes_per_trial"] = stage["peak_rss_above_start_mib"] * MIB / n_trials
    return {
        "n_trials": n_trials,
        "n_utterances": n_utts_named,
        "table_mib": table.embeddings.numel() * 4 / MIB,
        "per_trial_float32_mib": n_trials * 4 / MIB,
        "scores_csv_mib": (folder / "scores_verification.csv").stat().st_size / MIB,
        "stages": stages,
        "metrics": {"cosine": report["cosine"], "asnorm": report["asnorm"]},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[55_089, 183_631, 550_894])
    parser.add_argument("--cohort", type=int, default=5_994)
    parser.add_argument("--work", default="/tmp/sepid-trial-scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "tests/benchmarks/results/trial_scale.json"))
    args = parser.parse_args(argv)

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    speakers, names = voxceleb1_utterances(rng)
    labels, enrol, test = voxceleb1h_trials(rng, speakers, max(args.sizes))
    cohort = torch.randn(args.cohort, EMBEDDING_DIM, generator=torch.Generator().manual_seed(1))
    folders = {}
    for n in sorted(args.sizes):
        folders[n] = work / str(n)
        named = write_inputs(folders[n], names, labels[:n], enrol[:n], test[:n])
        folders[n] = (folders[n], len(named))
    generate_seconds = time.perf_counter() - t0

    rows = []
    for n in sorted(args.sizes):
        folder, n_named = folders[n]
        rows.append(run_size(folder, work / "data", n_named, cohort, args.seed))
    sizes = [row["n_trials"] for row in rows]
    growth = {
        stage: exponent(sizes, [row["stages"][stage]["peak_rss_above_start_mib"] for row in rows])
        for stage in rows[0]["stages"]
    }
    time_growth = {
        stage: exponent(sizes, [row["stages"][stage]["seconds"] for row in rows])
        for stage in rows[0]["stages"]
    }
    result = {
        "rows": rows,
        "peak_rss_growth_exponent": growth,
        "seconds_growth_exponent": time_growth,
        "generate_seconds": generate_seconds,
        "corpus": {
            "speakers": VOXCELEB1_SPEAKERS,
            "utterances": VOXCELEB1_UTTERANCES,
            "embedding_dim": EMBEDDING_DIM,
            "target_fraction": float(labels.mean()),
        },
        "asnorm": {"cohort": args.cohort, "top_n": ASNORM_TOP_N},
        "method": "each stage run once untraced (time.perf_counter; peak RSS = VmHWM after "
        "resetting it through /proc/self/clear_refs, minus VmRSS before; glibc mallopt "
        "M_MMAP_THRESHOLD 128 KiB and malloc_trim(0) before each stage) and once under "
        "tracemalloc (peak of traced allocations; torch tensors are not traced)",
        "command": "python tests/benchmarks/bench_trial_scale.py "
        + " ".join(["--sizes", *map(str, args.sizes), "--cohort", str(args.cohort)]),
    }
    return write_result(args.out, result)


if __name__ == "__main__":
    main()

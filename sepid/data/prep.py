"""What the speaker preps (:func:`sepid.data.voxceleb.prepare_voxceleb`,
:func:`sepid.data.folder.prepare_folder`) share: their options (:class:`PrepOptions`),
deterministic splits, generated trial lists, the audio scan with bad-file handling, writing the
manifests, and the command-line options of their scripts (``data_prep/*.py``). Each prepare
function lists its corpus, selects speakers (:mod:`sepid.data.speakers`), calls
:func:`scan_audio`, makes its trial list from what the scan found, and hands everything to
:func:`write_manifests`; nothing here calls back into it.

Outputs (in ``save_folder``; names and columns in :mod:`sepid.data.schema`)
---------------------------------------------------------------------------
Utterance manifests, CSV columns ``ID, duration, wav, spk_id`` (``UTTERANCE_COLUMNS``); ``duration``
in seconds, ``wav`` as ``$data_root/<path relative to data_folder>``, rows sorted by ``ID``:

- ``train.csv``, ``valid.csv``: speaker-classifier training and validation, with two more columns
  ``start, stop`` (``SEGMENT_COLUMNS``, seconds): the part of the file a row stands for (the
  whole file, ``0`` to its duration, except for held-out segments, below); ``duration`` is
  ``stop - start`` there;
- ``iden_enrol.csv``, ``iden_test.csv``: closed-set identification enrolment and test;
- ``veri_utts.csv``: every utterance named in the trial list, once (written with trials only).

``veri_trials.csv`` (columns ``label, enrol, test``, ``TRIAL_COLUMNS``): label ``1`` for a
target (same speaker) trial and ``0`` otherwise; ``enrol`` and ``test`` are utterance IDs of
``veri_utts.csv``.

``bad_files.txt`` (only when ``skip_bad_files`` left files out): one ``<path><TAB><reason>`` line
per skipped file or trial line. ``prep_options.json`` is written last: a prep that stopped half
way reruns, one whose options match is skipped (see :func:`sepid.data.manifest.prep_is_done`). The
data folder's content is not part of the options: delete ``prep_options.json`` to force a rerun
after adding files.

Split rule (:func:`split_speaker_utterances`)
--------------------------------------------
For each speaker: sort its utterance IDs, shuffle them with ``random.Random(f"{seed}:{spk}")``;
the first ``n_iden_test`` go to ``iden_test`` (never used for training); of the rest,
``valid_ratio`` of them (rounded half up, at least 1 when ``valid_ratio > 0`` and 3 or more
remain, and never so many that fewer than ``max(n_iden_enrol, 1)`` are left for training) go to
``valid``, the others to ``train``. ``iden_enrol`` is the first ``n_iden_enrol`` of the train
portion (identification enrols from training utterances; its test utterances are never trained
on). A speaker with fewer than ``n_iden_test + max(n_iden_enrol, 1)`` usable utterances goes
entirely to ``train`` (a warning names it) and takes no part in identification. Each speaker's
split only depends on its own utterances, the seed and its ID, so adding speakers leaves the
split of the others unchanged.

Held-out segments (``valid_segment_seconds > 0``): a speaker left with no validation utterance
by the rule above (too few utterances, e.g. one) gives validation the last
``valid_segment_seconds`` of its longest training utterance (ties: the first in shuffled order)
that is at least ``valid_segment_seconds + min_duration`` long; that utterance's ``train.csv`` row
then stops where the segment starts, so training never sees it. Its ``valid.csv`` row has the ID
``<utterance ID>@<start>`` . A speaker with no utterance long enough is not validated (logged).
So a corpus of one utterance per speaker still gets a validation set of every speaker.

Speaker selection: :func:`sepid.data.speakers.select_speakers` (``"all"``, the first N sorted,
a list of IDs or a file of IDs).

Audio checks (:func:`scan_audio`)
--------------------------------
Every file is opened and its samples checked by :func:`sepid.data.audio.check_audio`, in parallel
threads, streaming blocks (memory bounded): float and lossy files are decoded entirely (a NaN or
infinite sample anywhere is found); integer files (PCM wav, flac), which cannot hold NaN, up to
their first non-silent block, then their last frames (truncation). So the cost is about one
small block per file for the usual corpora (about 0.1 ms more per flac file than reading the
header and the end, on the 100-file LibriSpeech sample; decoding whole flac files would cost
about 15 times the old check), and prep stays the only place that pays it (a rerun with the same
options is skipped).

- Bad files: empty (0 samples), unreadable, truncated, or holding a NaN or infinite sample. An
  error naming the file and the fix (remove it, or ``skip_bad_files=True``); with
  ``skip_bad_files=True`` they are left out and listed in ``bad_files.txt`` with the reason.
- Digitally silent files (every sample below :data:`sepid.data.audio.SILENT_PEAK`, i.e. zero in
  16-bit PCM): they decode, so they are not an error; without ``skip_bad_files`` they are kept
  and a warning names them (and the fix); with ``skip_bad_files=True`` they are left out and
  listed in ``bad_files.txt`` like the bad files.
- Files shorter than ``min_duration`` seconds are left out of the training and identification
  manifests and counted in the log (not an error).
- Files that are not 16 kHz mono are kept (recipes downmix and resample through
  :func:`sepid.data.audio.read_audio`), with a note in the log.

``prep_options.json`` records :data:`AUDIO_CHECKS_VERSION`, so manifests written before a check
was added are prepared again.
"""

import argparse
import collections
import concurrent.futures
import logging
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sepid.data.audio import SILENT_PEAK, AudioError, check_audio
from sepid.data.manifest import relative_to_root, save_prep_options, write_atomic, write_csv
from sepid.data.schema import (
    BAD_FILES_TXT,
    PREP_OPTIONS_FILE,
    SEGMENT_COLUMNS,
    SPLIT_FILES,
    TRIAL_COLUMNS,
    TRIAL_FILES,
    UTTERANCE_COLUMNS,
    VERI_TRIALS_CSV,
    VERI_UTTS_CSV,
)
from sepid.data.speakers import parse_speakers_arg

logger = logging.getLogger(__name__)

EXPECTED_RATE = 16000
SCAN_CHUNK = 2000
# 1: header and last frames; 2: also every sample finite, and silent files found.
AUDIO_CHECKS_VERSION = 2
SILENT_REASON = f"digitally silent (every sample below {SILENT_PEAK:.2g}, zero in 16-bit PCM)"


@dataclass(frozen=True)
class Utterance:
    """One audio file: its manifest ID, absolute path and speaker ID."""

    id: str
    path: str
    spk: str


@dataclass
class ScanResult:
    """What :func:`scan_audio` found.

    Attributes
    ----------
    durations : dict
        ID -> duration in seconds, for every readable, non-empty file.
    short : set
        IDs of readable files shorter than ``min_duration``.
    bad : list
        ``(path, reason)`` of the files left out (only with ``skip_bad_files``).
    silent : list
        Paths of the digitally silent files (kept without ``skip_bad_files``, else also in
        ``bad``).
    """

    durations: dict = field(default_factory=dict)
    short: set = field(default_factory=set)
    bad: list = field(default_factory=list)
    silent: list = field(default_factory=list)

    def usable(self, utt_id):
        """True for a readable file at least ``min_duration`` long."""
        return utt_id in self.durations and utt_id not in self.short


@dataclass(frozen=True)
class PrepOptions:
    """The options every speaker prep shares: how the audio is checked (:func:`scan_audio`) and
    how each speaker's utterances are split (:func:`split_speaker_utterances`). The prepare
    functions take them as named arguments (their user-facing API) and pass them on as one.

    Attributes
    ----------
    n_iden_enrol, n_iden_test : int
        Identification enrolment (from the train part) and test utterances per speaker.
    valid_ratio : float
        Fraction of each speaker's non-test utterances used for validation.
    valid_segment_seconds : float
        Held-out validation segment of each speaker left with no validation utterance (0: none).
    min_duration : float
        Shorter files are left out of train / valid / identification.
    skip_bad_files : bool
        Leave bad and silent files out (listed in ``bad_files.txt``) instead of raising / keeping.
    seed : int
        Seed of the per-speaker shuffles.
    """

    n_iden_enrol: int = 3
    n_iden_test: int = 2
    valid_ratio: float = 0.1
    valid_segment_seconds: float = 0.0
    min_duration: float = 1.0
    skip_bad_files: bool = False
    seed: int = 1234

    def record(self):
        """The options as recorded in ``prep_options.json``."""
        return asdict(self)


# --------------------------------------------------------------------------- options and outputs


def output_files(with_trials):
    """Names of the files a prep writes (``prep_options.json`` excluded)."""
    names = list(SPLIT_FILES.values())
    if with_trials:
        names += list(TRIAL_FILES.values())
    return names


def output_paths(save_folder, with_trials):
    """Dict of output paths returned by the prepare functions.

    Keys: ``train, valid, iden_enrol, iden_test``, ``veri_trials, veri_utts`` (with trials),
    ``prep_options`` and ``bad_files`` (only when that file exists).
    """
    save_folder = Path(save_folder)
    files = dict(SPLIT_FILES)
    if with_trials:
        files.update(TRIAL_FILES)
    files["prep_options"] = PREP_OPTIONS_FILE
    paths = {key: str(save_folder / name) for key, name in files.items()}
    if (save_folder / BAD_FILES_TXT).is_file():
        paths["bad_files"] = str(save_folder / BAD_FILES_TXT)
    return paths


# --------------------------------------------------------------------------- splits


def _round_half_up(x):
    return int(math.floor(x + 0.5))


def split_speaker_utterances(
    utts_by_spk,
    n_iden_enrol=3,
    n_iden_test=2,
    valid_ratio=0.1,
    seed=1234,
    durations=None,
    valid_segment_seconds=0.0,
    min_duration=1.0,
):
    """Splits each speaker's utterances into train / valid / identification sets.

    Arguments
    ---------
    utts_by_spk : dict
        Speaker ID -> list of utterance IDs.
    n_iden_enrol, n_iden_test : int
        Identification enrolment (taken from train) and test utterances per speaker.
    valid_ratio : float
        Fraction of the non-test utterances of each speaker used for validation.
    seed : int
        Seed of the per-speaker shuffles.
    durations : dict, optional
        Utterance ID -> seconds; needed with ``valid_segment_seconds > 0``.
    valid_segment_seconds : float
        Length of the held-out segment of a speaker that has no validation utterance (0: none).
    min_duration : float
        Training audio a held-out segment must leave of its utterance, in seconds.

    Returns
    -------
    dict
        ``{"train", "valid", "iden_enrol", "iden_test"}`` -> sorted lists of utterance IDs, and
        ``"held_out"`` -> ``{utterance ID: start second}`` of the held-out segments (each runs to
        the end of its utterance; ``valid`` does not list their utterances).
    """
    if n_iden_enrol < 0 or n_iden_test < 0:
        raise ValueError(f"n_iden_enrol={n_iden_enrol}, n_iden_test={n_iden_test}: must be >= 0.")
    if not 0 <= valid_ratio < 1:
        raise ValueError(f"valid_ratio={valid_ratio} must be in [0, 1).")
    if valid_segment_seconds < 0:
        raise ValueError(f"valid_segment_seconds={valid_segment_seconds} must be >= 0.")
    if valid_segment_seconds > 0 and durations is None:
        raise ValueError("valid_segment_seconds > 0 needs the utterance durations.")
    min_train = max(n_iden_enrol, 1)
    needed = n_iden_test + min_train
    splits = {"train": [], "valid": [], "iden_enrol": [], "iden_test": []}
    held_out, too_few, unvalidated = {}, [], []

    def hold_out_segment(spk, train_ids):
        if valid_segment_seconds <= 0:
            return
        long_enough = [u for u in train_ids if durations[u] >= valid_segment_seconds + min_duration]
        if not long_enough:
            unvalidated.append(spk)
            return
        longest = max(long_enough, key=lambda u: durations[u])  # first of the longest
        held_out[longest] = round(durations[longest] - valid_segment_seconds, 3)

    for spk in sorted(utts_by_spk):
        ids = sorted(utts_by_spk[spk])
        if not ids:
            continue
        random.Random(f"{seed}:{spk}").shuffle(ids)
        if len(ids) < needed:
            too_few.append((spk, len(ids)))
            splits["train"] += ids
            hold_out_segment(spk, ids)
            continue
        test, rest = ids[:n_iden_test], ids[n_iden_test:]
        n_valid = _round_half_up(valid_ratio * len(rest))
        if valid_ratio > 0 and len(rest) >= 3:
            n_valid = max(1, n_valid)
        n_valid = max(0, min(n_valid, len(rest) - min_train))
        valid, train = rest[:n_valid], rest[n_valid:]
        splits["iden_test"] += test
        splits["valid"] += valid
        splits["train"] += train
        splits["iden_enrol"] += train[:n_iden_enrol]
        if not valid:
            hold_out_segment(spk, train)
    if too_few:
        logger.warning(
            "%d speaker(s) have fewer than %d usable utterances (n_iden_test=%d + "
            "max(n_iden_enrol, 1)=%d); they go entirely to train and take no part in "
            "identification%s: %s%s",
            len(too_few),
            needed,
            n_iden_test,
            min_train,
            (
                f" (validation: a held-out {valid_segment_seconds:g} s segment)"
                if valid_segment_seconds > 0
                else " or validation (valid_segment_seconds > 0 validates them on a held-out "
                "segment)"
            ),
            ", ".join(f"{s} ({n})" for s, n in too_few[:10]),
            " ..." if len(too_few) > 10 else "",
        )
    if held_out:
        logger.info(
            "%d speaker(s) validated on a held-out %g s segment of a training utterance",
            len(held_out),
            valid_segment_seconds,
        )
    if unvalidated:
        logger.warning(
            "%d speaker(s) have no utterance of %g s (valid_segment_seconds + min_duration) to "
            "hold a validation segment out of; they are not validated: %s%s",
            len(unvalidated),
            valid_segment_seconds + min_duration,
            ", ".join(unvalidated[:10]),
            " ..." if len(unvalidated) > 10 else "",
        )
    result = {key: sorted(ids) for key, ids in splits.items()}
    result["held_out"] = dict(sorted(held_out.items()))
    return result


# --------------------------------------------------------------------------- audio scan


def _probe(utt):
    try:
        return utt, check_audio(utt.path), None
    except (AudioError, FileNotFoundError) as err:
        return utt, None, err


def scan_audio(utterances, min_duration=1.0, skip_bad_files=False, num_workers=4):
    """Opens every file, measures its duration and sorts out bad and short ones.

    Arguments
    ---------
    utterances : iterable of Utterance
        Files to check.
    min_duration : float
        Files shorter than this (seconds) are reported in ``ScanResult.short``.
    skip_bad_files : bool
        Leave bad files (unreadable, empty, truncated, NaN or infinite samples) and digitally
        silent ones out (listed in ``ScanResult.bad``) instead of raising (bad) or warning and
        keeping them (silent).
    num_workers : int
        Threads checking files (libsndfile and numpy release the GIL).

    Returns
    -------
    ScanResult

    Raises
    ------
    AudioError, FileNotFoundError
        A bad file when ``skip_bad_files`` is False; the message names it and the fix.
    """
    utterances = sorted(utterances, key=lambda u: u.id)
    result = ScanResult()
    rates = collections.Counter()
    multichannel = 0
    workers = max(1, min(num_workers, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(utterances), SCAN_CHUNK):
            chunk = utterances[start : start + SCAN_CHUNK]
            for utt, info, err in pool.map(_probe, chunk):
                if err is not None:
                    if not skip_bad_files:
                        raise err
                    logger.warning("Skipping bad file: %s", err)
                    result.bad.append((utt.path, str(err).splitlines()[0]))
                    continue
                if info.silent:
                    result.silent.append(utt.path)
                    if skip_bad_files:
                        logger.warning("Skipping silent file: %s", utt.path)
                        result.bad.append((utt.path, SILENT_REASON))
                        continue
                frames, rate, channels = info.frames, info.sample_rate, info.channels
                rates[rate] += 1
                multichannel += channels > 1
                duration = frames / rate
                result.durations[utt.id] = round(duration, 4)
                if duration < min_duration:
                    result.short.add(utt.id)
            done = start + len(chunk)
            if len(utterances) > 20000 and (done // SCAN_CHUNK) % 10 == 0:
                logger.info("Scanned %d / %d audio files", done, len(utterances))
    logger.info("Scanned %d audio files", len(utterances))
    if result.silent and not skip_bad_files:
        logger.warning(
            "%d file(s) are %s and are kept as speech: %s%s. Remove them, or run data prep with "
            "skip_bad_files=True (--skip_bad_files=True for a recipe, --skip_bad_files for "
            "data_prep/*.py) to leave them out and list them in bad_files.txt.",
            len(result.silent),
            SILENT_REASON,
            ", ".join(result.silent[:10]),
            f" and {len(result.silent) - 10} more" if len(result.silent) > 10 else "",
        )
    if result.short:
        logger.warning(
            "%d file(s) shorter than min_duration=%.2f s left out of train/valid/"
            "identification (e.g. %s)",
            len(result.short),
            min_duration,
            sorted(result.short)[:3],
        )
    other_rates = {r: n for r, n in rates.items() if r != EXPECTED_RATE}
    if other_rates:
        logger.info(
            "%d file(s) are not %d Hz (rates: %s); recipes resample them on the fly "
            "(sepid.data.audio.read_audio), or convert the data once to save time.",
            sum(other_rates.values()),
            EXPECTED_RATE,
            dict(sorted(other_rates.items())),
        )
    if multichannel:
        logger.info("%d file(s) have several channels; recipes downmix them.", multichannel)
    return result


# --------------------------------------------------------------------------- trials


def _sample_excluding(rng, total, block_start, block_end, k):
    """``k`` distinct indices of ``range(total)`` outside ``[block_start, block_end)``."""
    width = block_end - block_start
    picks = rng.sample(range(total - width), min(k, total - width))
    return [i if i < block_start else i + width for i in picks]


def generate_trials(utts_by_spk, trials_per_utterance=5, n_trials=None, seed=1234):
    """Generates a balanced verification trial list.

    Design: every utterance is, as enrolment, paired with up to ``trials_per_utterance`` other
    utterances of its speaker (target trials) and ``trials_per_utterance`` utterances of other
    speakers (non-target trials), drawn with ``random.Random(f"{seed}:trials")``. Trials are
    unordered pairs: ``(a, b)`` and ``(b, a)`` count once, and no utterance is paired with
    itself. The larger class is then randomly subsampled so that both classes have the same
    size, and ``n_trials`` (if given) caps the total at ``n_trials // 2`` per class.

    Arguments
    ---------
    utts_by_spk : dict
        Speaker ID -> utterance IDs (at least 2 speakers).
    trials_per_utterance : int
        Target and non-target partners drawn per utterance.
    n_trials : int, optional
        Upper bound of the number of trials.
    seed : int
        Seed of the draw.

    Returns
    -------
    list of tuple
        ``(label, enrol_id, test_id)`` sorted by enrol then test.
    """
    if trials_per_utterance < 1:
        raise ValueError(f"trials_per_utterance={trials_per_utterance} must be >= 1.")
    spks = sorted(s for s, ids in utts_by_spk.items() if ids)
    if len(spks) < 2:
        raise ValueError(
            f"Verification trials need at least 2 speakers with usable utterances, got "
            f"{len(spks)} ({spks}). Add speakers, lower min_duration, or disable trials."
        )
    rng = random.Random(f"{seed}:trials")
    flat, blocks = [], {}
    for spk in spks:
        ids = sorted(set(utts_by_spk[spk]))
        blocks[spk] = (len(flat), len(flat) + len(ids))
        flat += ids
    k = trials_per_utterance
    seen = set()
    targets, nontargets = [], []
    for spk in spks:
        start, end = blocks[spk]
        for pos in range(start, end):
            partners = [
                start + i
                for i in _sample_excluding(rng, end - start, pos - start, pos - start + 1, k)
            ]
            for p in partners:
                key = (min(pos, p), max(pos, p))
                if key not in seen:
                    seen.add(key)
                    targets.append((1, flat[pos], flat[p]))
            for p in _sample_excluding(rng, len(flat), start, end, k):
                key = (min(pos, p), max(pos, p))
                if key not in seen:
                    seen.add(key)
                    nontargets.append((0, flat[pos], flat[p]))
    n_each = min(len(targets), len(nontargets))
    if n_trials is not None:
        if n_trials // 2 > n_each:
            logger.warning(
                "n_trials=%d asked, but only %d balanced trials are available with "
                "trials_per_utterance=%d; raise trials_per_utterance for more.",
                n_trials,
                2 * n_each,
                k,
            )
        n_each = min(n_each, n_trials // 2)
    if n_each == 0:
        raise ValueError(
            "No balanced verification trial can be drawn: every trial speaker has a single "
            "usable utterance (no target trial) or n_trials < 2. Use speakers with 2 or more "
            "utterances, or disable trials."
        )
    if len(targets) > n_each:
        targets = rng.sample(targets, n_each)
    if len(nontargets) > n_each:
        nontargets = rng.sample(nontargets, n_each)
    trials = sorted(targets + nontargets, key=lambda t: (t[1], t[2]))
    logger.info(
        "Generated %d verification trials (%d target, %d non-target) over %d speakers",
        len(trials),
        n_each,
        n_each,
        len(spks),
    )
    return trials


# --------------------------------------------------------------------------- writing


def utterance_rows(ids, utterances, durations, data_folder):
    """Manifest rows (:data:`~sepid.data.schema.UTTERANCE_COLUMNS`) of ``ids``, sorted by ID."""
    rows = []
    for utt_id in sorted(ids):
        utt = utterances[utt_id]
        rows.append(
            {
                "ID": utt_id,
                "duration": durations[utt_id],
                "wav": relative_to_root(utt.path, data_folder),
                "spk_id": utt.spk,
            }
        )
    return rows


def segment_rows(rows, cuts, part):
    """:data:`~sepid.data.schema.SEGMENT_COLUMNS` rows from utterance rows: the whole file (``start`` 0, ``stop``
    its duration), except for the utterances in ``cuts`` (ID -> second), cut there:
    ``part="head"`` keeps what comes before the cut (same ID), ``part="tail"`` what comes after
    it (ID ``<ID>@<cut>``)."""
    out = []
    for row in rows:
        duration = float(row["duration"])
        start, stop, utt_id = 0.0, duration, row["ID"]
        if row["ID"] in cuts:
            cut = cuts[row["ID"]]
            if part == "head":
                stop = cut
            else:
                start, utt_id = cut, f"{row['ID']}@{cut:g}"
        out.append(
            {
                **row,
                "ID": utt_id,
                "duration": round(stop - start, 6),  # sample-accurate (1 us)
                "start": start,
                "stop": stop,
            }
        )
    return out


def write_bad_files(save_folder, bad):
    """Writes ``bad_files.txt`` (``path<TAB>reason`` lines), or removes a stale one."""
    path = Path(save_folder) / BAD_FILES_TXT
    if bad:
        write_atomic(path, "".join(f"{p}\t{reason}\n" for p, reason in bad))
        logger.warning("%d bad file(s) or trial(s) skipped, listed in %s", len(bad), path)
    elif path.is_file():
        path.unlink()


def write_manifests(
    save_folder,
    data_folder,
    utterances,
    scan,
    train_speakers,
    options,
    record,
    trials=None,
    bad=(),
):
    """Splits the training speakers' usable utterances, writes every manifest, then
    ``prep_options.json``.

    Arguments
    ---------
    save_folder, data_folder : str or Path
        Output folder; root the ``$data_root`` paths are relative to.
    utterances : dict
        ID -> :class:`Utterance`, every scanned file (training speakers and trial files).
    scan : ScanResult
        What :func:`scan_audio` found in ``utterances``.
    train_speakers : iterable of str
        Speakers of train / valid / identification.
    options : PrepOptions
        The split options.
    record : dict
        Recorded in ``prep_options.json`` for :func:`sepid.data.manifest.prep_is_done`.
    trials : list of tuple, optional
        ``(label, enrol_id, test_id)`` of the verification list; None: no trial files.
    bad : list
        ``(path, reason)`` already found by the caller (missing trial files, failed conversions).

    Returns
    -------
    dict
        Output paths, see :func:`output_paths`.
    """
    save_folder = Path(save_folder)
    train_speakers = set(train_speakers)
    by_spk = collections.defaultdict(list)
    for utt_id, utt in utterances.items():
        if utt.spk in train_speakers and scan.usable(utt_id):
            by_spk[utt.spk].append(utt_id)
    empty = sorted(train_speakers - set(by_spk))
    if empty:
        logger.warning(
            "%d selected speaker(s) have no usable utterance and are left out: %s",
            len(empty),
            empty[:10],
        )
    if not by_spk:
        raise ValueError(
            f"No usable training utterance in {data_folder} (all files bad or shorter than "
            f"min_duration={options.min_duration} s)."
        )
    splits = split_speaker_utterances(
        by_spk,
        options.n_iden_enrol,
        options.n_iden_test,
        options.valid_ratio,
        options.seed,
        durations=scan.durations,
        valid_segment_seconds=options.valid_segment_seconds,
        min_duration=options.min_duration,
    )
    held_out = splits.pop("held_out")
    save_folder.mkdir(parents=True, exist_ok=True)
    for key, name in SPLIT_FILES.items():
        rows = utterance_rows(splits[key], utterances, scan.durations, data_folder)
        if key == "train":
            write_csv(save_folder / name, segment_rows(rows, held_out, "head"), SEGMENT_COLUMNS)
        elif key == "valid":
            tails = utterance_rows(held_out, utterances, scan.durations, data_folder)
            rows = segment_rows(rows, {}, "tail") + segment_rows(tails, held_out, "tail")
            write_csv(save_folder / name, rows, SEGMENT_COLUMNS)
        else:
            write_csv(save_folder / name, rows, UTTERANCE_COLUMNS)
    logger.info(
        "Split %d speakers: %s, held-out validation segments=%d",
        len(by_spk),
        ", ".join(f"{k}={len(v)}" for k, v in splits.items()),
        len(held_out),
    )
    if trials is not None:
        trial_rows = [{"label": lab, "enrol": e, "test": t} for lab, e, t in trials]
        veri_ids = {e for _, e, _ in trials} | {t for _, _, t in trials}
        rows = utterance_rows(veri_ids, utterances, scan.durations, data_folder)
        write_csv(save_folder / VERI_TRIALS_CSV, trial_rows, TRIAL_COLUMNS)
        write_csv(save_folder / VERI_UTTS_CSV, rows, UTTERANCE_COLUMNS)
    write_bad_files(save_folder, list(bad) + scan.bad)
    save_prep_options(save_folder, record)
    return output_paths(save_folder, trials is not None)


def prep_arg_parser(description, data_folder_help):
    """The command-line options every prep script (``data_prep/voxceleb_prepare.py``,
    ``data_prep/folder_prepare.py``) shares: the ``prepare_*`` named arguments of the same names
    (``--speakers`` parsed by :func:`sepid.data.speakers.parse_speakers_arg`); each script adds
    its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data_folder", required=True, help=data_folder_help)
    parser.add_argument("--save_folder", required=True, help="Where the manifests go.")
    parser.add_argument(
        "--speakers",
        default="all",
        type=parse_speakers_arg,
        help="all | N (first N sorted) | id1,id2 | file with one ID per line",
    )
    parser.add_argument("--n_iden_enrol", type=int, default=3)
    parser.add_argument("--n_iden_test", type=int, default=2)
    parser.add_argument("--valid_ratio", type=float, default=0.1)
    parser.add_argument(
        "--valid_segment_seconds",
        type=float,
        default=0.0,
        help="speakers with no validation utterance are validated on a held-out segment of "
        "this length (0: not validated)",
    )
    parser.add_argument("--min_duration", type=float, default=1.0)
    parser.add_argument("--skip_bad_files", action="store_true")
    parser.add_argument("--seed", type=int, default=1234)
    return parser


def run_prep(prepare, args):
    """What a prep script does with its parsed ``args``: log to the console, call ``prepare``
    (:func:`sepid.data.voxceleb.prepare_voxceleb`, :func:`sepid.data.folder.prepare_folder`) with
    them as named arguments, log each output path; returns the outputs."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    outputs = prepare(**vars(args))
    for key, path in outputs.items():
        logger.info("%s: %s", key, path)
    return outputs

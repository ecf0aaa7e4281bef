"""A written two-speaker mixture corpus for joint separation + speaker identification, from a
speaker manifest: :func:`make_mixtures` (command line: ``data_prep/make_mixtures.py``).

Reads a manifest written by the speaker data prep (columns ``ID, duration, wav, spk_id``, paths as
``$data_root/...`` resolved with ``data_folder``) and writes, for each split with mixtures
(``n_mix[split] > 0``):

- ``<save_folder>/<split>/{mix,s1,s2}/<ID>.wav``: 32-bit float WAV (no quantisation, so
  ``mix == s1 + s2`` holds in the files to float32 precision), at the corpus's sample rate (that
  of its first file, sorted by utterance ID) or ``sample_rate``; sources at other rates are
  resampled through :func:`sepid.data.audio.read_audio`. IDs are ``<split>_<index:06d>``;
- ``<save_folder>/<split>.csv``, columns :data:`sepid.data.schema.MIXTURE_COLUMNS`:
  ``ID, duration, mix_wav, s1_wav, s2_wav, s1_spk, s2_spk, s1_class, s2_class, gain_db, s1_utt,
  s2_utt``; paths as ``$data_root/<split>/mix/<ID>.wav`` (``save_folder`` is the data root of
  the mixture corpus), ``duration`` in seconds, ``s*_utt`` the manifest IDs of the sources;

then ``speakers.json`` (``{"train": [...], "valid": [...], "test": [...]}``, each split's sorted
speakers; ``s*_class`` index these lists) and ``prep_options.json``.

Speaker splits (disjoint; by default the first 50 speakers in sorted order for train, the next
50 for test, and valid mixtures from held-out utterances of the train speakers), speaker
classes, levels (``gain_db``, ``loudness``), ``length_mode`` and the no-clipping rule: see
:mod:`sepid.data.mixtures`.

Each mixture pairs utterances of two different speakers, drawn with
``numpy.random.default_rng([seed, split index])`` (train 0, valid 1, test 2): the same options
give byte-identical CSVs and audio. Within a split no unordered pair of utterances is mixed
twice (the same two utterances in swapped order at 0 dB would be the same audio) and reuse is
balanced: each utterance is in at most ``ceil(2 n / U)`` mixtures (``n`` mixtures, ``U`` usable
utterances; :class:`sepid.data.mixtures.DistinctPairDrawer`). Asking for more mixtures than the
split's distinct pairs (:func:`sepid.data.mixtures.max_distinct_pairs`) is an error naming that
maximum, or, with ``allow_fewer=True``, that many mixtures and a warning. Utterances shorter than ``min_duration`` are not used
(counted in the log); a draw whose mixture would be shorter than ``min_duration`` or whose source
is silent is drawn again, at most :data:`sepid.data.mixtures.MAX_ATTEMPTS` times, then an error.

Commit order and reruns: each split's audio is written first (every file atomically: a hidden
``.<name>.XXXXXXXX.tmp`` file, then a rename), then its CSV (atomically, the commit point of the
split), then ``speakers.json``, ``prep_options.json`` last. What a rerun into the same
``save_folder`` does depends on the options of the run that wrote it (its ``prep_options.json``,
or the in-progress marker of an interrupted run):

- same options: skipped when complete (:func:`sepid.data.manifest.prep_is_done`); otherwise resumed:
  the splits whose CSV was written are kept, the others made (the draws are deterministic, so
  the result is that of an uninterrupted run). Hidden temporary files that an interrupted run
  left (only this tool's own names, ``.<split>_<index>.wav.XXXXXXXX.tmp`` in
  ``<split>/{mix,s1,s2}/`` and ``.<output>.XXXXXXXX.tmp`` of its CSV/JSON outputs) are removed
  first, and counted in the log;
- other options: nothing is deleted without ``overwrite=True`` (``--overwrite``): a
  ``FileExistsError`` lists every option that differs (old -> new) and the ways out (the same
  options, ``--overwrite``, or another ``save_folder``). With ``overwrite=True`` the previous
  run's CSVs and ``<split>/{mix,s1,s2}/`` folders are deleted (logged as a warning), then the
  mixtures are made.

``save_folder`` must be empty, absent, or written by this tool (a ``prep_options.json`` of
``make_mixtures``, or its in-progress marker): otherwise it is refused, unless ``overwrite=True``,
which writes over files of the same names and deletes nothing else. One run per ``save_folder``
at a time (a second run would take the first one's temporary files for leftovers).

Example: see ``data_prep/make_mixtures.py``.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np

from sepid.data.audio import read_audio
from sepid.data.manifest import (
    file_fingerprint,
    prep_is_done,
    relative_to_root,
    save_prep_options,
    write_atomic,
    write_csv,
)
from sepid.data.mixtures import (
    DEFAULT_N_MIX,
    DEFAULT_SPLIT_SPEAKERS,
    MAX_ATTEMPTS,
    SPLITS,
    DistinctPairDrawer,
    MixingOptions,
    SilentSourceError,
    corpus_sample_rate,
    split_speaker_pools,
    write_float_wav,
)
from sepid.data.schema import MIXTURE_COLUMNS, PREP_OPTIONS_FILE, SPEAKERS_JSON, mixture_csv
from sepid.data.speakers import speakers_option
from sepid.training.experiment import LOCK_NAME

logger = logging.getLogger(__name__)

PREP_NAME = "make_mixtures"
FORMAT_VERSION = 2  # 2: distinct pairs, balanced reuse (1 could draw a pair twice)
IN_PROGRESS = ".make_mixtures_in_progress.json"
AUDIO_KINDS = ("mix", "s1", "s2")
# The temporary files of sepid.data.manifest.write_atomic (tempfile.mkstemp: prefix ".<name>.",
# 8 random characters of [a-z0-9_], suffix ".tmp"), for the names this tool writes: only these
# are removed as leftovers of an interrupted run.
_RANDOM = r"\.[a-z0-9_]{8}\.tmp"
_OUTPUTS = [
    *(mixture_csv(split) for split in SPLITS),
    SPEAKERS_JSON,
    PREP_OPTIONS_FILE,
    IN_PROGRESS,
]
TEMP_OUTPUT = re.compile(r"^\.(?:" + "|".join(map(re.escape, _OUTPUTS)) + ")" + _RANDOM + "$")
TEMP_AUDIO = re.compile(r"^\.(?:train|valid|test)_\d{6}\.wav" + _RANDOM + "$")


def _n_mix(n_mix):
    n_mix = dict(DEFAULT_N_MIX if n_mix is None else n_mix)
    unknown = sorted(set(n_mix) - set(SPLITS))
    if unknown:
        raise ValueError(f"n_mix has unknown split(s) {unknown}; use {list(SPLITS)}.")
    out = {}
    for split in SPLITS:
        value = n_mix.get(split, 0)
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
            raise ValueError(f"n_mix[{split!r}]={value!r}: give a whole number >= 0.")
        out[split] = int(value)
    return out


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _owned(save_folder):
    """True when ``save_folder`` was written (or is being written) by this tool."""
    if (save_folder / IN_PROGRESS).is_file():
        return True
    saved = _read_json(save_folder / PREP_OPTIONS_FILE)
    return isinstance(saved, dict) and saved.get("prep") == PREP_NAME


def check_save_folder(save_folder, overwrite=False):
    """Refuses a non-empty ``save_folder`` that this tool did not write, unless ``overwrite``.

    Returns
    -------
    bool
        Whether the folder is this tool's own (empty, new, or written by it): its temporary
        leftovers may then be removed, its outputs only with ``overwrite=True``.
    """
    save_folder = Path(save_folder)
    if save_folder.exists() and not save_folder.is_dir():
        raise NotADirectoryError(f"save_folder {save_folder} exists and is not a folder.")
    # the run lock (sepid.training.experiment.guard_output_folder) is not content
    if not save_folder.is_dir() or all(p.name == LOCK_NAME for p in save_folder.iterdir()):
        return True
    if _owned(save_folder):
        return True
    if not overwrite:
        raise FileExistsError(
            f"save_folder {save_folder} is not empty and was not written by make_mixtures (no "
            f"{PREP_OPTIONS_FILE} of it). Choose an empty or new folder, or pass overwrite=True "
            "(--overwrite) to write mixtures over files of the same names there."
        )
    logger.warning(
        "save_folder %s holds files not written by make_mixtures: overwriting (overwrite=True)",
        save_folder,
    )
    return False


def previous_run(save_folder):
    """The options of the run that wrote ``save_folder`` and how it ended.

    Returns
    -------
    tuple
        ``(options, "interrupted")`` when the in-progress marker is there (its options; ``{}``
        when unreadable), ``(options, "finished")`` from a ``prep_options.json`` of this tool,
        ``(None, None)`` when neither is.
    """
    save_folder = Path(save_folder)
    if (save_folder / IN_PROGRESS).is_file():
        marker = _read_json(save_folder / IN_PROGRESS)
        return (marker if isinstance(marker, dict) else {}), "interrupted"
    saved = _read_json(save_folder / PREP_OPTIONS_FILE)
    if isinstance(saved, dict) and saved.get("prep") == PREP_NAME:
        return saved, "finished"
    return None, None


def _flatten(options, prefix=""):
    flat = {}
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def options_diff(old, new):
    """``[(option, old value, new value)]`` for every option (nested keys dotted, e.g.
    ``n_mix.train``) that differs; a missing option's value is ``"<unset>"``."""
    old, new = _flatten(old), _flatten(new)
    unset = "<unset>"
    return [
        (key, old.get(key, unset), new.get(key, unset))
        for key in sorted(set(old) | set(new))
        if old.get(key, unset) != new.get(key, unset)
    ]


def _refuse_other_options(save_folder, diff, state):
    changes = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in diff)
    run = "an interrupted make_mixtures run" if state == "interrupted" else "make_mixtures"
    raise FileExistsError(
        f"save_folder {save_folder} holds mixtures written by {run} with other options "
        f"({changes}). Nothing was deleted. To keep them, rerun with the same options (it "
        f"{'resumes' if state == 'interrupted' else 'skips'}); to replace them, pass "
        "overwrite=True (--overwrite), which deletes that run's CSVs and audio; or choose "
        "another save_folder for the new mixtures."
    )


def remove_temp_leftovers(save_folder):
    """Deletes the hidden temporary files that an interrupted run of this tool left in its own
    ``save_folder`` (:data:`TEMP_OUTPUT` at its top, :data:`TEMP_AUDIO` in
    ``<split>/{mix,s1,s2}/``; nothing else) and returns how many."""
    save_folder = Path(save_folder)
    folders = [(save_folder, TEMP_OUTPUT)]
    folders += [
        (save_folder / split / kind, TEMP_AUDIO) for split in SPLITS for kind in AUDIO_KINDS
    ]
    removed = 0
    for folder, pattern in folders:
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    if removed:
        logger.info(
            "Removed %d temporary file(s) left by an interrupted make_mixtures run in %s",
            removed,
            save_folder,
        )
    return removed


def output_paths(save_folder, n_mix):
    """``{split: csv path}`` for the splits with mixtures, ``speakers`` and ``prep_options``."""
    save_folder = Path(save_folder)
    paths = {split: str(save_folder / mixture_csv(split)) for split in SPLITS if n_mix[split] > 0}
    paths["speakers"] = str(save_folder / SPEAKERS_JSON)
    paths["prep_options"] = str(save_folder / PREP_OPTIONS_FILE)
    return paths


def _prepare_folder(save_folder, options, own, clear):
    """Makes ``save_folder`` ready for writing: removes this tool's temporary leftovers (in its
    own folder), deletes the previous run's outputs when ``clear`` (``overwrite=True`` and other
    options), then marks the folder as in progress with ``options``.

    The commit points go first and the marker last, so a process killed half way leaves a folder
    that a rerun reads right: the old options (nothing kept that the new ones did not write),
    or the new marker with the old CSVs already gone."""
    save_folder.mkdir(parents=True, exist_ok=True)
    if own:
        remove_temp_leftovers(save_folder)
    if clear:
        for split in SPLITS:
            (save_folder / mixture_csv(split)).unlink(missing_ok=True)
        for split in SPLITS:
            for kind in AUDIO_KINDS:
                shutil.rmtree(save_folder / split / kind, ignore_errors=True)
    marker = save_folder / IN_PROGRESS
    if _read_json(marker) != json.loads(json.dumps(options)):
        write_atomic(marker, json.dumps(options, indent=2, sort_keys=True))
    (save_folder / PREP_OPTIONS_FILE).unlink(missing_ok=True)


def _make_split(split, pool, pairs, save_folder, sample_rate, mixing):
    """Mixes and writes the ``len(pairs)`` mixtures of ``split`` planned by ``pairs`` (a
    :class:`sepid.data.mixtures.DistinctPairDrawer`), then its CSV (the split's commit point)."""
    rng = pairs.rng
    n = len(pairs)
    min_duration = mixing.min_duration
    min_samples = min_duration * sample_rate
    rows, redrawn = [], 0
    for i in range(n):
        for _ in range(MAX_ATTEMPTS):
            u1, u2 = pairs[i]
            level_db, gain_db = mixing.draw_levels(rng)
            if mixing.length_mode == "min" and min(u1.duration, u2.duration) < min_duration:
                pairs.replace(i)
                redrawn += 1
                continue
            sig1, sig2 = read_audio(u1.path, sample_rate), read_audio(u2.path, sample_rate)
            try:
                mix, s1, s2 = mixing.mix(sig1, sig2, level_db, gain_db)
            except SilentSourceError as err:
                logger.warning("Redrawing %s mixture %d: %s (%s, %s)", split, i, err, u1.id, u2.id)
                pairs.replace(i)
                redrawn += 1
                continue
            if mix.shape[0] + 2 < min_samples:
                pairs.replace(i)
                redrawn += 1
                continue
            break
        mix_id = f"{split}_{i:06d}"
        paths = {}
        for kind, sig in (("mix", mix), ("s1", s1), ("s2", s2)):
            path = save_folder / split / kind / f"{mix_id}.wav"
            write_float_wav(path, sig, sample_rate)
            paths[kind] = relative_to_root(path, save_folder)
        rows.append(
            {
                "ID": mix_id,
                "duration": round(mix.shape[0] / sample_rate, 4),
                "mix_wav": paths["mix"],
                "s1_wav": paths["s1"],
                "s2_wav": paths["s2"],
                "s1_spk": u1.spk,
                "s2_spk": u2.spk,
                "s1_class": pool.class_of(u1.spk),
                "s2_class": pool.class_of(u2.spk),
                "gain_db": gain_db,
                "s1_utt": u1.id,
                "s2_utt": u2.id,
            }
        )
        if (i + 1) % max(1, n // 10) == 0 or i + 1 == n:
            logger.info("%s: %d / %d mixtures", split, i + 1, n)
    if redrawn:
        logger.info("%s: %d draw(s) redone (silent source or mixture too short)", split, redrawn)
    write_csv(save_folder / mixture_csv(split), rows, MIXTURE_COLUMNS)


def make_mixtures(
    manifest,
    data_folder,
    save_folder,
    n_mix=None,
    split_speakers=None,
    sample_rate=None,
    length_mode="min",
    gain_db_range=(0.0, 0.0),
    loudness="none",
    min_duration=1.0,
    seed=1234,
    valid_utt_fraction=0.1,
    allow_fewer=False,
    overwrite=False,
):
    """Writes a two-speaker mixture corpus from a speaker manifest (see the module docstring).

    Arguments
    ---------
    manifest : str or Path
        Speaker manifest (``ID, duration, wav, spk_id``).
    data_folder : str or Path
        Corpus root replacing ``$data_root`` in the manifest.
    save_folder : str or Path
        Root of the mixture corpus (empty, new, or written by this tool).
    n_mix : dict, optional
        Mixtures per split, default ``{"train": 1000, "valid": 100, "test": 200}``; splits
        missing from a given dict get none.
    split_speakers : dict, optional
        Speakers per split (int, list, comma string or file; see :mod:`sepid.data.mixtures`);
        missing keys default to ``{"train": 50, "valid": 0, "test": 50}``.
    sample_rate : int, optional
        Output rate; None: the corpus's own.
    length_mode : str
        ``"min"`` (cut to the shorter source) or ``"max"`` (zero-pad the shorter).
    gain_db_range : tuple of float
        Range of the uniform draw of s2's level relative to s1 (dB).
    loudness : str
        ``"none"`` (equal RMS, then ``gain_db``) or ``"librimix"`` (RMS levels in [-33, -25]).
    min_duration : float
        Shortest source and mixture (seconds).
    seed : int
        Seed of the draws.
    valid_utt_fraction : float
        Fraction of each train speaker's utterances held out for valid when valid has no
        speakers of its own.
    allow_fewer : bool
        When a split's ``n_mix`` exceeds the distinct pairs its utterances make: write that
        many with a warning (the CSV then has fewer rows) instead of raising a ``ValueError``
        that names the maximum.
    overwrite : bool
        Allow replacing mixtures that this tool wrote in ``save_folder`` with other options
        (they are deleted first), or writing into a non-empty folder that it did not write
        (over files of the same names; nothing else deleted). Without it, neither deletes or
        overwrites anything: a ``FileExistsError`` says what differs and how to proceed.

    Returns
    -------
    dict
        Output paths: one CSV per split with mixtures, ``speakers``, ``prep_options``.
    """
    n_mix = _n_mix(n_mix)
    mixing = MixingOptions(length_mode, gain_db_range, loudness, min_duration, seed)
    if sample_rate is not None and (int(sample_rate) != sample_rate or sample_rate <= 0):
        raise ValueError(f"sample_rate={sample_rate}: give a positive integer rate in Hz or None.")
    manifest, data_folder, save_folder = Path(manifest), Path(data_folder), Path(save_folder)
    if not manifest.is_file():
        raise FileNotFoundError(
            f"Manifest not found: {manifest}. Run the data prep script that writes it first."
        )
    if not data_folder.is_dir():
        raise FileNotFoundError(
            f"Data folder not found: {data_folder} (the corpus root the manifest's $data_root "
            "paths are relative to)."
        )
    spec = dict(DEFAULT_SPLIT_SPEAKERS)
    spec.update(split_speakers or {})
    options = {
        "prep": PREP_NAME,
        "version": FORMAT_VERSION,
        "manifest": {"file": str(manifest.resolve()), "sha1": file_fingerprint(manifest)},
        "data_folder": str(data_folder.resolve()),
        "n_mix": n_mix,
        "split_speakers": {k: speakers_option(v) for k, v in sorted(spec.items())},
        "sample_rate": None if sample_rate is None else int(sample_rate),
        "length_mode": length_mode,
        "gain_db_range": list(mixing.gain_db_range),
        "loudness": loudness,
        "min_duration": min_duration,
        "seed": seed,
        "valid_utt_fraction": valid_utt_fraction,
        "allow_fewer": bool(allow_fewer),
    }
    owned = check_save_folder(save_folder, overwrite)
    previous, state = previous_run(save_folder) if owned else (None, None)
    clear = False
    if previous is not None:
        diff = options_diff(previous, json.loads(json.dumps(options)))
        if diff and not overwrite:
            _refuse_other_options(save_folder, diff, state)
        if diff:
            logger.warning(
                "save_folder %s holds mixtures of make_mixtures with other options (%s): "
                "deleting them (overwrite=True)",
                save_folder,
                "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in diff),
            )
            clear = True
        elif state == "interrupted":
            logger.info("Resuming an interrupted make_mixtures run in %s", save_folder)
        else:
            outputs = [Path(p).name for k, p in output_paths(save_folder, n_mix).items()]
            outputs.remove(PREP_OPTIONS_FILE)
            if prep_is_done(save_folder, options, outputs):
                return output_paths(save_folder, n_mix)

    pools, _ = split_speaker_pools(manifest, data_folder, spec, min_duration, valid_utt_fraction)
    drawers = {}
    for split in SPLITS:
        if n_mix[split] > 0:
            pools[split].check(split, f"manifest {manifest}")
            drawers[split] = DistinctPairDrawer(
                np.random.default_rng([seed, SPLITS.index(split)]),
                pools[split],
                n_mix[split],
                where=f"Split {split!r} of manifest {manifest}",
                allow_fewer=allow_fewer,
            )
    if sample_rate is None:
        sample_rate = corpus_sample_rate(list(pools.values()))
        logger.info("Mixtures at the corpus's sample rate, %d Hz (first file)", sample_rate)
    sample_rate = int(sample_rate)
    for split in SPLITS:
        logger.info(
            "%s: %d speaker(s) (%d with usable utterances), %d mixture(s)",
            split,
            len(pools[split].speakers),
            len(pools[split].drawable),
            n_mix[split],
        )

    _prepare_folder(save_folder, options, own=owned, clear=clear)
    resume = previous is not None and not clear
    for split in SPLITS:
        if n_mix[split] == 0:
            continue
        if resume and (save_folder / mixture_csv(split)).is_file():
            logger.info("%s.csv already written with the same options: keeping it", split)
            continue
        _make_split(split, pools[split], drawers[split], save_folder, sample_rate, mixing)
    speakers = {split: pools[split].speakers for split in SPLITS}
    write_atomic(save_folder / SPEAKERS_JSON, json.dumps(speakers, indent=2))
    save_prep_options(save_folder, options)
    (save_folder / IN_PROGRESS).unlink(missing_ok=True)
    return output_paths(save_folder, n_mix)

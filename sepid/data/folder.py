"""Data prep for any folder of speaker-labelled audio, with a generated verification list.

Layouts (auto-detected):

- nested: ``<data_folder>/<speaker>/**/<utt>.{wav,flac}``, the speaker is the first-level folder
  (e.g. LibriSpeech ``test-other/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac``);
- flat: ``<data_folder>/<speaker>-<anything>.{wav,flac}``, used when ``data_folder`` directly
  holds audio files; the speaker is the file name before the first ``-`` (LibriSpeech-style
  names). Only the files directly in ``data_folder`` are used then.

Folder symlinks are followed (a speaker folder may be a link to another disk); a folder reached
twice (a link loop) is listed once, with a warning.

Utterance IDs are the path relative to ``data_folder`` without extension, ``/`` replaced by
``--``: ``1688/1688-142285-0000.flac`` -> ``1688--1688-142285-0000``.

The verification list is balanced and seeded (see :func:`sepid.data.prep.generate_trials`): every
utterance of the trial speakers is enrolment of up to ``trials_per_utterance`` (default 5)
target trials and as many non-target trials; duplicates (either order) and self-trials are
never drawn; the larger class is subsampled to the size of the smaller; ``n_trials`` caps the
total. ``trial_speakers=None`` writes no trial list. Trial speakers may overlap the training
speakers (closed-set verification); pass disjoint ``speakers`` and ``trial_speakers`` for an
open-set protocol.

Outputs, splits and bad-file handling: see :mod:`sepid.data.prep`; speaker selection:
:mod:`sepid.data.speakers`. Command line: ``data_prep/folder_prepare.py``; in a recipe YAML::

    prepare_data: !name:sepid.data.folder.prepare_folder
        data_folder: !ref <data_folder>
        save_folder: !ref <prep_folder>
"""

import collections
import logging
import os
from pathlib import Path

from sepid.data.manifest import prep_is_done
from sepid.data.prep import (
    AUDIO_CHECKS_VERSION,
    PrepOptions,
    Utterance,
    generate_trials,
    output_files,
    output_paths,
    scan_audio,
    write_manifests,
)
from sepid.data.speakers import select_speakers, speakers_option

logger = logging.getLogger(__name__)

EXPECTED_LAYOUT = (
    "expected <data_folder>/<speaker>/**/<utt>.wav|flac, or a flat folder of "
    "<speaker>-<rest>.wav|flac files"
)


def list_folder(data_folder, extensions=(".wav", ".flac")):
    """Lists the audio of a speaker folder.

    Arguments
    ---------
    data_folder : str or Path
        Nested or flat folder (see the module docstring).
    extensions : tuple of str
        Audio file extensions (case-insensitive).

    Returns
    -------
    utterances : dict
        ID -> :class:`sepid.data.prep.Utterance`.
    flat : bool
        Whether the flat layout was detected.
    """
    root = Path(data_folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder not found: {root} ({EXPECTED_LAYOUT}).")
    extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    direct, nested = [], []
    seen = {os.path.realpath(root): str(root)}  # real folder -> the path it was listed under
    # Folder symlinks are followed as file symlinks are (a speaker folder may link to another
    # disk); a folder reached twice (a link loop, or two links to one folder) is listed once.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            path = os.path.join(dirpath, d)
            real = os.path.realpath(path)
            if real in seen:
                logger.warning(
                    "%s is %s again (through a folder symlink): not listed twice.", path, seen[real]
                )
                continue
            seen[real] = path
            kept.append(d)
        dirnames[:] = kept
        target = direct if dirpath == str(root) else nested
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(extensions):
                target.append(os.path.join(dirpath, name))
    flat = bool(direct)
    files = direct if flat else nested
    if not files:
        raise ValueError(
            f"No audio file ({', '.join(extensions)}) under {root}: {EXPECTED_LAYOUT}."
        )
    if flat and nested:
        logger.warning(
            "%s holds audio files directly: flat layout (speaker = file name before the first "
            "'-'); the %d audio file(s) in its subfolders are ignored.",
            root,
            len(nested),
        )
    utterances = {}
    for path in files:
        rel = Path(os.path.relpath(path, root))
        if flat:
            if "-" not in rel.stem:
                raise ValueError(
                    f"Flat folder file {path} has no '-' in its name, so no speaker: name files "
                    "<speaker>-<rest>.wav, or put them in one folder per speaker."
                )
            spk = rel.stem.split("-", 1)[0]
        else:
            spk = rel.parts[0]
        utt_id = rel.with_suffix("").as_posix().replace("/", "--")
        if utt_id in utterances:
            raise ValueError(
                f"Two files give the utterance ID {utt_id}: {utterances[utt_id].path} and {path}. "
                "Keep one format per utterance or restrict extensions."
            )
        utterances[utt_id] = Utterance(utt_id, os.path.abspath(path), spk)
    return utterances, flat


def prepare_folder(
    data_folder,
    save_folder,
    speakers="all",
    n_iden_enrol=3,
    n_iden_test=2,
    valid_ratio=0.1,
    valid_segment_seconds=0.0,
    min_duration=1.0,
    n_trials=None,
    trials_per_utterance=5,
    trial_speakers="all",
    skip_bad_files=False,
    seed=1234,
    extensions=(".wav", ".flac"),
):
    """Writes the speaker ID / verification manifests of a speaker-labelled folder.

    Arguments
    ---------
    data_folder : str or Path
        Nested ``<speaker>/**/<utt>`` or flat ``<speaker>-<rest>`` folder.
    save_folder : str or Path
        Where the manifests go.
    speakers : str, int, list or path
        Training / identification speakers: ``"all"``, first N (sorted), list or file.
    n_iden_enrol, n_iden_test : int
        Identification enrolment / test utterances per speaker.
    valid_ratio : float
        Fraction of each speaker's non-test utterances used for validation.
    valid_segment_seconds : float
        Held-out validation segment (seconds) of each speaker left with no validation
        utterance (see :mod:`sepid.data.prep`); 0: such speakers are not validated.
    min_duration : float
        Shorter files are left out everywhere, trials included (logged).
    n_trials : int, optional
        Cap on the number of generated trials.
    trials_per_utterance : int
        Target (and non-target) trials drawn per enrolment utterance.
    trial_speakers : str, int, list, path or None
        Speakers of the trial list (same forms as ``speakers``); None: no trial list.
    skip_bad_files : bool
        Skip (and list in ``bad_files.txt``) unreadable files instead of raising.
    seed : int
        Seed of the splits and the trial draw.
    extensions : tuple of str
        Audio file extensions.

    Returns
    -------
    dict
        Output paths (``train, valid, iden_enrol, iden_test, [veri_trials, veri_utts],
        prep_options, [bad_files]``).
    """
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(f"Data folder not found: {data_folder} ({EXPECTED_LAYOUT}).")
    with_trials = trial_speakers is not None
    prep = PrepOptions(
        n_iden_enrol=n_iden_enrol,
        n_iden_test=n_iden_test,
        valid_ratio=valid_ratio,
        valid_segment_seconds=valid_segment_seconds,
        min_duration=min_duration,
        skip_bad_files=skip_bad_files,
        seed=seed,
    )
    record = {
        "prep": "folder",
        "audio_checks": AUDIO_CHECKS_VERSION,
        "data_folder": str(data_folder.resolve()),
        "speakers": speakers_option(speakers),
        **prep.record(),
        "n_trials": n_trials,
        "trials_per_utterance": trials_per_utterance,
        "trial_speakers": speakers_option(trial_speakers),
        "extensions": sorted(extensions),
    }
    if prep_is_done(save_folder, record, output_files(with_trials)):
        return output_paths(save_folder, with_trials)

    all_utts, flat = list_folder(data_folder, extensions)
    available = sorted({u.spk for u in all_utts.values()})
    logger.info(
        "Found %d audio files of %d speakers in %s (%s layout)",
        len(all_utts),
        len(available),
        data_folder,
        "flat" if flat else "nested",
    )
    train_spks = select_speakers(available, speakers, str(data_folder))
    trial_spks = select_speakers(available, trial_speakers, str(data_folder)) if with_trials else []
    if with_trials and len(trial_spks) < 2:
        raise ValueError(
            f"Verification trials need at least 2 speakers; trial_speakers selects "
            f"{trial_spks} in {data_folder}. Select more, or trial_speakers=None for no trials."
        )
    keep = set(train_spks) | set(trial_spks)
    utterances = {uid: u for uid, u in all_utts.items() if u.spk in keep}

    scan = scan_audio(utterances.values(), min_duration, skip_bad_files)
    trials = None
    if with_trials:
        by_spk = collections.defaultdict(list)
        for uid, utt in utterances.items():
            if utt.spk in trial_spks and scan.usable(uid):
                by_spk[utt.spk].append(uid)
        trials = generate_trials(by_spk, trials_per_utterance, n_trials, seed)
    return write_manifests(
        save_folder, data_folder, utterances, scan, train_spks, prep, record, trials=trials
    )

"""Data prep for VoxCeleb1 and VoxCeleb2.

Layouts: VoxCeleb1 ``<data_folder>/[wav/]<spk>/<video>/<utt>.wav``; VoxCeleb2
``<data_folder>/[dev/aac/|aac/]<spk>/<video>/<utt>.m4a``. The speaker root is ``data_folder``
itself or its first subfolder among ``wav``, ``dev/aac``, ``aac``, ``dev/wav`` whose children
look like ``id\\d+``. Utterance IDs are ``<spk>--<video>--<utt stem>`` (as SpeechBrain's
``voxceleb_prepare``); when an utterance exists in several formats, ``.wav`` is used before
``.flac`` before ``.m4a``.

VoxCeleb2's m4a files cannot be read by libsndfile: they are converted once, with ffmpeg (the
system's on PATH, else the binary the ``imageio-ffmpeg`` dependency ships; 16 kHz mono,
``-ac 1 -ar 16000``), to ``<utt>.flac`` beside ``<utt>.m4a``. Existing flac files
are reused and never overwritten, and no file of the dataset is deleted. Only the selected
speakers and the trial list's files are converted.

The optional verification list uses the standard format, one trial per line
``label enrol_path test_path`` with paths relative to the speaker root, e.g. VoxCeleb1's
``veri_test2.txt``: ``1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav``. Trials are
kept as they are (``min_duration`` only filters train / valid / identification, so that a
standard list stays comparable); ``exclude_verification_speakers=True`` removes the trial
speakers from train / valid / identification (with ``speakers=N``, the first N speakers not in
the trial list are taken).

Outputs, splits and bad-file handling: see :mod:`sepid.data.prep`; speaker selection:
:mod:`sepid.data.speakers`. Command line: ``data_prep/voxceleb_prepare.py``; in a recipe YAML::

    prepare_data: !name:sepid.data.voxceleb.prepare_voxceleb
        data_folder: !ref <data_folder>
        save_folder: !ref <prep_folder>
"""

import concurrent.futures
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from sepid.data.audio import AudioError
from sepid.data.manifest import file_fingerprint, prep_is_done
from sepid.data.prep import (
    AUDIO_CHECKS_VERSION,
    PrepOptions,
    Utterance,
    output_files,
    output_paths,
    scan_audio,
    write_manifests,
)
from sepid.data.speakers import select_speakers, speakers_option

logger = logging.getLogger(__name__)

SPEAKER_ROOTS = ("", "wav", "dev/aac", "aac", "dev/wav")
SPEAKER_DIR = re.compile(r"^id\d+$")
EXTENSION_PREFERENCE = (".wav", ".flac", ".m4a")
CONVERT_WORKERS = 4
EXPECTED_LAYOUT = (
    "expected <data_folder>/[wav/]<spk>/<video>/<utt>.wav (VoxCeleb1) or "
    "<data_folder>/[dev/aac/|aac/]<spk>/<video>/<utt>.m4a (VoxCeleb2), speakers named id<digits>"
)


def _speaker_dirs(folder):
    try:
        return sorted(
            e.name for e in os.scandir(folder) if e.is_dir() and SPEAKER_DIR.match(e.name)
        )
    except (FileNotFoundError, NotADirectoryError):
        return []


def find_speaker_root(data_folder):
    """The folder holding the ``id\\d+`` speaker folders: ``data_folder`` or a standard
    subfolder (``wav``, ``dev/aac``, ``aac``, ``dev/wav``).

    Raises
    ------
    FileNotFoundError
        ``data_folder`` does not exist.
    ValueError
        No speaker folder found.
    """
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(
            f"VoxCeleb data folder not found: {data_folder} ({EXPECTED_LAYOUT})."
        )
    for sub in SPEAKER_ROOTS:
        root = data_folder / sub if sub else data_folder
        if _speaker_dirs(root):
            return root
    raise ValueError(
        f"No VoxCeleb speaker folder (id<digits>) in {data_folder} or its subfolders "
        f"{[s for s in SPEAKER_ROOTS if s]}: {EXPECTED_LAYOUT}."
    )


class _Listing:
    """Lists speaker folders lazily (each once) as ``{utt_id: Utterance}``."""

    def __init__(self, speaker_root):
        self.root = Path(speaker_root)
        self._cache = {}

    def speaker(self, spk):
        if spk not in self._cache:
            self._cache[spk] = self._list(spk)
        return self._cache[spk]

    def _list(self, spk):
        found = {}
        spk_dir = self.root / spk
        if not spk_dir.is_dir():
            return found
        for video in sorted(os.scandir(spk_dir), key=lambda e: e.name):
            if not video.is_dir():
                continue
            for entry in os.scandir(video.path):
                stem, ext = os.path.splitext(entry.name)
                ext = ext.lower()
                if entry.name.startswith(".") or ext not in EXTENSION_PREFERENCE:
                    continue
                if not entry.is_file():
                    continue
                utt_id = f"{spk}--{video.name}--{stem}"
                old = found.get(utt_id)
                rank = EXTENSION_PREFERENCE.index(ext)
                if old is None or rank < EXTENSION_PREFERENCE.index(Path(old.path).suffix.lower()):
                    found[utt_id] = Utterance(utt_id, os.path.abspath(entry.path), spk)
        return found

    def resolve(self, rel_path):
        """Utterance of a trial-list path ``<spk>/<video>/<utt>.<ext>`` (any audio extension;
        a leading prefix such as ``wav/`` is ignored), or None."""
        parts = Path(rel_path).parts
        if len(parts) < 3:
            return None
        spk, video, name = parts[-3:]
        return self.speaker(spk).get(f"{spk}--{video}--{Path(name).stem}")


def _bundled_ffmpeg():
    """The ffmpeg binary that the ``imageio-ffmpeg`` package ships (a dependency of this project,
    so the conversion works where no system ffmpeg is installed, CI included), or None."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # its binary was not installed for this platform
        return None


def _ffmpeg_or_raise():
    """The ffmpeg to convert with: the system's (on PATH) first, else imageio-ffmpeg's."""
    ffmpeg = shutil.which("ffmpeg") or _bundled_ffmpeg()
    if ffmpeg is None:
        raise RuntimeError(
            "VoxCeleb2 m4a files must be converted, but ffmpeg is not on PATH (nor the one of "
            "the imageio-ffmpeg package). Install it (`apt-get install ffmpeg`, `conda install "
            "-c conda-forge ffmpeg`, or `pip install imageio-ffmpeg`), or convert the files "
            "beforehand to <utt>.flac beside each <utt>.m4a (e.g. `ffmpeg -i x.m4a -ac 1 "
            "-ar 16000 x.flac`)."
        )
    return ffmpeg


def _writable(folder):
    return os.access(folder, os.W_OK)


def _convert_one(ffmpeg, src):
    """Converts ``src`` (.m4a) to a flac beside it; returns ``(src, flac path, error)``."""
    dst = os.path.splitext(src)[0] + ".flac"
    if os.path.exists(dst):
        return src, dst, None
    folder, name = os.path.split(src)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp.flac")
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", src]
    cmd += ["-vn", "-ac", "1", "-ar", "16000", "-f", "flac", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not os.path.isfile(tmp):
            message = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            return src, None, f"ffmpeg failed ({proc.returncode}): {message[0]}"
        if os.path.exists(dst):  # converted meanwhile by another process: keep theirs
            return src, dst, None
        os.replace(tmp, dst)
        return src, dst, None
    except OSError as err:
        return src, None, f"conversion failed: {err}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def convert_m4a_files(utterances, skip_bad_files=False, num_workers=CONVERT_WORKERS):
    """Converts the m4a files among ``utterances`` to flac beside them, in parallel.

    Arguments
    ---------
    utterances : dict
        ID -> Utterance; m4a entries are replaced by their flac (in place).
    skip_bad_files : bool
        Drop files ffmpeg cannot convert (returned in ``bad``) instead of raising.
    num_workers : int
        Parallel ffmpeg processes.

    Returns
    -------
    list
        ``(path, reason)`` of the m4a files that could not be converted.
    """
    todo = {uid: u for uid, u in utterances.items() if u.path.lower().endswith(".m4a")}
    if not todo:
        return []
    ffmpeg = _ffmpeg_or_raise()
    for folder in sorted({os.path.dirname(u.path) for u in todo.values()}):
        if not _writable(folder):
            raise PermissionError(
                f"Cannot write the converted flac files next to the m4a files: {folder} is not "
                "writable. Copy the dataset to a writable place (e.g. `cp -r <data_folder> "
                "/scratch/`) and point data_folder there, or convert the m4a files beforehand "
                "to <utt>.flac beside each <utt>.m4a."
            )
    logger.info("Converting %d m4a file(s) to 16 kHz mono flac with %s", len(todo), ffmpeg)
    by_path = {u.path: uid for uid, u in todo.items()}
    bad = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = pool.map(lambda p: _convert_one(ffmpeg, p), sorted(by_path))
        for done, (src, dst, err) in enumerate(results, start=1):
            uid = by_path[src]
            if err is not None:
                if not skip_bad_files:
                    raise AudioError(
                        f"Cannot convert {src}: {err}. Check the file, or run data prep with "
                        "skip_bad_files=True (--skip_bad_files) to leave it out."
                    )
                logger.warning("Skipping %s: %s", src, err)
                bad.append((src, err))
                del utterances[uid]
                continue
            utterances[uid] = Utterance(uid, dst, utterances[uid].spk)
            if done % 5000 == 0:
                logger.info("Converted %d / %d m4a files", done, len(by_path))
    return bad


def _text_lines(path, what):
    """The lines of the UTF-8 text file ``path``; a file that is not text (binary, another
    encoding) is a ``ValueError`` naming it, not a ``UnicodeDecodeError``."""
    try:
        with open(path, encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not a UTF-8 text file (byte {err.start}: {err.reason}), so not a "
            f"{what}: expected lines 'label enrol_path test_path' (e.g. VoxCeleb1's "
            "veri_test2.txt). Check the file given."
        ) from err


def read_trial_file(trial_file, resolve, skip_bad_files=False, search_root=None):
    """Reads a verification list in the standard ``label enrol_path test_path`` format.

    Arguments
    ---------
    trial_file : str or Path
        The list, one trial per line (e.g. VoxCeleb1's ``veri_test2.txt``).
    resolve : callable
        ``resolve(path_in_list) -> Utterance or None`` (None: no such file).
    skip_bad_files : bool
        Skip trials naming a missing file (listed in the returned ``bad``) instead of raising.
    search_root : str, optional
        Where files were looked for, for error messages.

    Returns
    -------
    trials : list of tuple
        ``(label, enrol Utterance, test Utterance)``, in file order.
    bad : list of tuple
        ``(description, reason)`` of skipped trials.
    """
    trial_file = Path(trial_file)
    if not trial_file.is_file():
        raise FileNotFoundError(f"Verification trial file not found: {trial_file}.")
    trials, bad = [], []
    where = f" under {search_root}" if search_root else ""
    for line_no, line in enumerate(_text_lines(trial_file, "verification trial list"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise ValueError(
                f"{trial_file}, line {line_no}: expected 'label enrol_path test_path' with "
                f"label 0 or 1, got {line.strip()[:200]!r}."
            )
        utts = []
        for rel in fields[1:]:
            utt = resolve(rel)
            if utt is None:
                if not skip_bad_files:
                    raise FileNotFoundError(
                        f"Trial file {trial_file}, line {line_no}: audio file {rel} not "
                        f"found{where}. Check that the data folder matches the trial list, "
                        "or run with skip_bad_files=True (--skip_bad_files) to skip such "
                        "trials."
                    )
                bad.append((f"{trial_file}:{line_no}: {rel}", "trial names a missing file"))
                break
            utts.append(utt)
        if len(utts) == 2:
            trials.append((int(fields[0]), utts[0], utts[1]))
    if bad:
        logger.warning("Skipped %d trial(s) of %s naming missing files", len(bad), trial_file)
    if not trials:
        raise ValueError(f"Trial file {trial_file} holds no usable trial.")
    return trials, bad


def prepare_voxceleb(
    data_folder,
    save_folder,
    speakers="all",
    verification_file=None,
    n_iden_enrol=3,
    n_iden_test=2,
    valid_ratio=0.1,
    valid_segment_seconds=0.0,
    min_duration=1.0,
    skip_bad_files=False,
    seed=1234,
    convert_m4a=True,
    exclude_verification_speakers=False,
):
    """Writes the speaker ID / verification manifests of a VoxCeleb1 or VoxCeleb2 folder.

    Arguments
    ---------
    data_folder : str or Path
        VoxCeleb folder (see the module docstring for the layouts).
    save_folder : str or Path
        Where the manifests go.
    speakers : str, int, list or path
        ``"all"``, first N (sorted), a list of IDs or a file with one ID per line.
    verification_file : str or Path, optional
        Trial list ``label enrol_path test_path``; gives ``veri_trials.csv``/``veri_utts.csv``.
    n_iden_enrol, n_iden_test : int
        Identification enrolment / test utterances per speaker.
    valid_ratio : float
        Fraction of each speaker's non-test utterances used for validation.
    valid_segment_seconds : float
        Held-out validation segment (seconds) of each speaker left with no validation
        utterance (see :mod:`sepid.data.prep`); 0: such speakers are not validated.
    min_duration : float
        Shorter files are left out of train / valid / identification (logged).
    skip_bad_files : bool
        Skip (and list in ``bad_files.txt``) unreadable files and trials naming missing files
        instead of raising.
    seed : int
        Seed of the splits.
    convert_m4a : bool
        Convert VoxCeleb2 m4a files to flac (needs ffmpeg); False: m4a files are an error.
    exclude_verification_speakers : bool
        Leave the trial speakers out of train / valid / identification.

    Returns
    -------
    dict
        Output paths (``train, valid, iden_enrol, iden_test, [veri_trials, veri_utts],
        prep_options, [bad_files]``).
    """
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise FileNotFoundError(
            f"VoxCeleb data folder not found: {data_folder} ({EXPECTED_LAYOUT})."
        )
    if exclude_verification_speakers and verification_file is None:
        raise ValueError("exclude_verification_speakers=True needs a verification_file.")
    if verification_file is not None and not Path(verification_file).is_file():
        raise FileNotFoundError(f"Verification trial file not found: {verification_file}.")
    with_trials = verification_file is not None
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
        "prep": "voxceleb",
        "audio_checks": AUDIO_CHECKS_VERSION,
        "data_folder": str(data_folder.resolve()),
        "speakers": speakers_option(speakers),
        "verification_file": (
            {
                "file": str(Path(verification_file).resolve()),
                "sha1": file_fingerprint(verification_file),
            }
            if with_trials
            else None
        ),
        **prep.record(),
        "convert_m4a": convert_m4a,
        "exclude_verification_speakers": exclude_verification_speakers,
    }
    if prep_is_done(save_folder, record, output_files(with_trials)):
        return output_paths(save_folder, with_trials)

    speaker_root = find_speaker_root(data_folder)
    available = _speaker_dirs(speaker_root)
    listing = _Listing(speaker_root)
    logger.info("Found %d speaker folders in %s", len(available), speaker_root)

    bad = []
    trials = []
    trial_spks = set()
    if with_trials:
        trials, bad = read_trial_file(
            verification_file, listing.resolve, skip_bad_files, search_root=speaker_root
        )
        trial_spks = {u.spk for _, e, t in trials for u in (e, t)}
        logger.info("Read %d trials over %d speakers", len(trials), len(trial_spks))

    if (
        exclude_verification_speakers
        and isinstance(speakers, int)
        and not isinstance(speakers, bool)
    ):
        candidates = [s for s in available if s not in trial_spks]
        train_spks = select_speakers(candidates, speakers, f"{speaker_root} minus trial speakers")
    else:
        train_spks = select_speakers(available, speakers, str(speaker_root))
        if exclude_verification_speakers:
            dropped = [s for s in train_spks if s in trial_spks]
            train_spks = [s for s in train_spks if s not in trial_spks]
            logger.info("Left %d trial speaker(s) out of training", len(dropped))
            if not train_spks:
                raise ValueError(
                    "exclude_verification_speakers=True leaves no training speaker: every "
                    "selected speaker appears in the trial list."
                )

    utterances = {}
    for spk in train_spks:
        utterances.update(listing.speaker(spk))
    if not utterances:
        raise ValueError(
            f"No audio file (.wav, .flac, .m4a) found for the selected speakers under "
            f"{speaker_root}: {EXPECTED_LAYOUT}."
        )
    for _, enrol, test in trials:
        utterances[enrol.id] = enrol
        utterances[test.id] = test

    if any(u.path.lower().endswith(".m4a") for u in utterances.values()):
        if not convert_m4a:
            example = next(u.path for u in utterances.values() if u.path.lower().endswith(".m4a"))
            raise ValueError(
                f"m4a files (e.g. {example}) cannot be read by libsndfile; set convert_m4a=True "
                "(needs ffmpeg) or convert them to <utt>.flac beforehand."
            )
        bad += convert_m4a_files(utterances, skip_bad_files)

    scan = scan_audio(utterances.values(), min_duration, skip_bad_files)
    kept = None
    if with_trials:
        kept = [
            (label, e.id, t.id)
            for label, e, t in trials
            if e.id in scan.durations and t.id in scan.durations
        ]
        if len(kept) < len(trials):
            logger.warning("Dropped %d trial(s) naming bad files", len(trials) - len(kept))
        if not kept:
            raise ValueError(f"No trial of {verification_file} is left after skipping bad files.")
        short = {i for _, e, t in kept for i in (e, t) if i in scan.short}
        if short:
            logger.warning(
                "%d trial utterance(s) are shorter than min_duration=%.2f s; the trial list "
                "keeps them.",
                len(short),
                min_duration,
            )
    return write_manifests(
        save_folder, data_folder, utterances, scan, train_spks, prep, record, trials=kept, bad=bad
    )

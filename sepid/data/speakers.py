"""Speaker selection, shared by data prep (which speakers a prep, or each mixture split, takes)
and training (which speakers become a fresh speaker branch's classes).

A selection (the ``speakers`` argument of the prepare functions, ``train_speakers`` of the
joint recipe, a split of ``split_speakers`` in mixing) is one of:

- ``"all"``;
- an int ``N``: the first ``N`` speaker IDs in sorted (string) order, as the reference system did
  with VoxCeleb2's first 100;
- a list of IDs, or a comma-separated string of them;
- a path to a text file with one ID per line (blank lines and ``#`` comments ignored).

An unknown ID is an error that names it.
"""

import os
from pathlib import Path

from sepid.data.manifest import file_fingerprint, read_csv
from sepid.data.schema import UTTERANCE_COLUMNS


def speakers_option(speakers):
    """JSON form of a ``speakers`` argument for ``prep_options.json`` (a file is recorded with
    its absolute path and content hash)."""
    if speakers is None or isinstance(speakers, int | list | tuple) or speakers == "all":
        return list(speakers) if isinstance(speakers, tuple) else speakers
    path = Path(speakers)
    if path.is_file():
        return {"file": str(path.resolve()), "sha1": file_fingerprint(path)}
    return str(speakers)


def parse_speakers_arg(value):
    """Parses a ``--speakers`` command-line value.

    ``all``; digits: the first N speakers; an existing file: one ID per line; otherwise a comma
    separated list of IDs (write ``1688,`` to select the single speaker with numeric ID 1688);
    ``none`` (case-insensitive) gives ``None``.
    """
    value = value.strip()
    if value.lower() == "none":
        return None
    if value == "all":
        return "all"
    if value.isdigit():
        return int(value)
    if os.path.isfile(value):
        return value
    ids = [v.strip() for v in value.split(",") if v.strip()]
    if not ids:
        raise ValueError(f"Empty speaker list {value!r}: give all, N, id1,id2 or a file path.")
    return ids


def load_speaker_file(path):
    """Speaker IDs of a text file, one per line (blank lines and ``#`` comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Speaker list file not found: {path}.")
    ids = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                ids.append(line)
    if not ids:
        raise ValueError(f"Speaker list file {path} names no speaker (one ID per line).")
    return ids


def select_speakers(available, speakers, source="the data folder"):
    """Sorted speaker IDs chosen from ``available`` (see the module docstring).

    Arguments
    ---------
    available : iterable of str
        Speaker IDs found in the data.
    speakers : str, int, list or path
        ``"all"``, an int N (first N in sorted order), a list of IDs or a speaker list file.
    source : str
        Where the speakers were found, for error messages.

    Returns
    -------
    list of str
        Sorted, unique speaker IDs.
    """
    available = sorted(set(available))
    if speakers is None or isinstance(speakers, bool):
        raise TypeError(f"speakers={speakers!r}: give 'all', an int, a list of IDs or a file.")
    if speakers == "all":
        return available
    if isinstance(speakers, int):
        if speakers <= 0:
            raise ValueError(f"speakers={speakers}: the number of speakers must be positive.")
        if speakers > len(available):
            raise ValueError(
                f"speakers={speakers} asks for the first {speakers} speakers, but only "
                f"{len(available)} are available in {source}. Use speakers='all' or fewer."
            )
        return available[:speakers]
    if isinstance(speakers, str | os.PathLike):
        text = str(speakers)
        if os.path.isfile(text):
            wanted = load_speaker_file(text)
            source_list = f"speaker list file {text}"
        elif "," in text:
            wanted = [s.strip() for s in text.split(",") if s.strip()]
            source_list = "the speakers argument"
        elif os.sep in text or text.endswith((".txt", ".lst", ".list")):
            raise FileNotFoundError(f"Speaker list file not found: {text}.")
        else:
            wanted = [text]
            source_list = "the speakers argument"
    else:
        wanted = [str(s) for s in speakers]
        source_list = "the speakers argument"
    if not wanted:
        raise ValueError("Empty speaker list: give 'all', an int, a list of IDs or a file.")
    known = set(available)
    unknown = [s for s in dict.fromkeys(wanted) if s not in known]
    if unknown:
        raise ValueError(
            f"Unknown speaker ID(s) in {source_list}: {unknown[:10]}"
            f"{f' and {len(unknown) - 10} more' if len(unknown) > 10 else ''}; they are not "
            f"in {source} ({len(available)} speakers, e.g. {available[:5]})."
        )
    return sorted(set(wanted))


def speakers_of_manifest(manifest, speakers):
    """The ``speakers`` selection (``"all"``, N, a list or a file) of a speaker manifest, sorted,
    so the classes are the same on every run and on resume."""
    available = {r["spk_id"] for r in read_csv(manifest, UTTERANCE_COLUMNS)}
    return sorted(select_speakers(available, speakers, f"manifest {manifest}"))

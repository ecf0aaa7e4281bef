"""CSV manifests: atomic writes, column checks and idempotent data prep.

Paths inside manifests are written as ``$data_root/<relative path>`` so a manifest moves with the
data; recipes replace ``$data_root`` through SpeechBrain's ``replacements``.
"""

import contextlib
import csv
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from sepid.data.schema import PREP_OPTIONS_FILE

logger = logging.getLogger(__name__)

DATA_ROOT = "$data_root"


def relative_to_root(path, root):
    """``$data_root/<path relative to root>`` for a file under ``root``."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return f"{DATA_ROOT}/{Path(rel).as_posix()}"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def resolve_path(path, data_root):
    """The manifest path ``$data_root/...`` with ``$data_root`` replaced by ``data_root``."""
    return str(path).replace(DATA_ROOT, str(data_root))


@contextlib.contextmanager
def atomic_open(path, binary=False):
    """A file to write ``path`` through: a temporary file ``.<name>.XXXXXXXX.tmp`` beside it,
    renamed onto ``path`` (``os.replace``) when the block ends without an error and removed when
    it raises. Readers see the old file or the whole new one, never a half-written one; the
    content can be written piece by piece (nothing has to be held in memory). Permissions follow
    the umask, as for a plain ``open``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (
            os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="", encoding="utf-8") as f
        ):
            yield f
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_atomic(path, content):
    """Writes ``content`` (text, or bytes for a binary file) to ``path`` through
    :func:`atomic_open`: complete or absent."""
    with atomic_open(path, binary=isinstance(content, bytes | bytearray | memoryview)) as f:
        f.write(content)


def write_csv(path, rows, fieldnames):
    """Writes dicts (a list or any iterable, written as they come) as a CSV atomically (header
    first, columns in ``fieldnames`` order)."""
    n_rows = 0
    with atomic_open(path) as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            n_rows += 1
    logger.info("Wrote %d rows to %s", n_rows, path)


def read_csv(path, required_columns=()):
    """Reads a manifest as a list of dicts, checking that ``required_columns`` are present.

    Raises
    ------
    FileNotFoundError
        The manifest does not exist.
    ValueError
        A required column is missing, or the file has no header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Manifest not found: {path}. Run the data prep script that writes it first."
        )
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in required_columns if c not in columns]
            if missing:
                raise ValueError(
                    f"Manifest {path} lacks column(s) {missing} (it has {columns[:20]}). "
                    "Regenerate it with the data prep script of this project."
                )
            return list(reader)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"Manifest {path} is not a UTF-8 text CSV (byte {err.start}: {err.reason}). "
            "Regenerate it with the data prep script of this project."
        ) from err


def file_fingerprint(path):
    """SHA-1 of a file's content, recorded in ``prep_options.json`` so that a changed input file
    (trial list, speaker list, manifest) reruns the prep."""
    sha = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def prep_is_done(save_folder, options, outputs):
    """True when ``save_folder`` holds every file in ``outputs`` and was written with the same
    ``options`` (a JSON-serialisable dict). Logs why prep is redone otherwise."""
    save_folder = Path(save_folder)
    opt_file = save_folder / PREP_OPTIONS_FILE
    if not opt_file.is_file():
        return False
    missing = [o for o in outputs if not (save_folder / o).is_file()]
    if missing:
        logger.info("Data prep outputs %s missing in %s: preparing again", missing, save_folder)
        return False
    with open(opt_file) as f:
        saved = json.load(f)
    if saved != json.loads(json.dumps(options)):
        logger.info(
            "Data prep options changed since the last run in %s: preparing again", save_folder
        )
        return False
    logger.info("Data prep already done in %s with the same options: skipping", save_folder)
    return True


def save_prep_options(save_folder, options):
    """Records the options a prep ran with; written last, so an interrupted prep reruns."""
    write_atomic(
        Path(save_folder) / PREP_OPTIONS_FILE, json.dumps(options, indent=2, sort_keys=True)
    )

"""The standard start of every recipe script, in one place, with the checks a user should get
before any audio is scanned or any model is built: overrides of the right type, an output folder
that can be written, and one run per output folder."""

import fcntl
import os
import socket
import tempfile
import time
from pathlib import Path

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml, resolve_references
from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from speechbrain.utils.distributed import if_main_process

LOCK_NAME = ".run.lock"
_held_locks = {}  # folder -> open lock file, held (and so locked) until the process exits


class _TagsAsNone(SafeConstructor):
    """Reads a HyperPyYAML file as plain YAML (1.2, as hyperpyyaml's ruamel loader reads it):
    every ``!tag`` value becomes None, so nothing is built, loaded or written while the file is
    only being inspected."""


_TagsAsNone.add_multi_constructor("!", lambda constructor, suffix, node: None)


def _plain_yaml():
    reader = YAML(typ="safe", pure=True)
    reader.Constructor = _TagsAsNone
    return reader


def plain_values(hparams_file, overrides=None):
    """The top-level values of a HyperPyYAML file with ``!ref`` resolved and every other tag as
    None (no object is created)."""
    with open(hparams_file, encoding="utf-8") as fin:
        text = resolve_references(fin, overrides or None).getvalue()
    return _plain_yaml().load(text) or {}


# Options whose values may be of several types: speaker selections are 'all', a number (the
# first N), a list of IDs or a file of IDs (see sepid.data.speakers.select_speakers).
SEVERAL_TYPES = {"speakers", "eval_speakers", "trial_speakers", "train_speakers"}


def check_override_types(hparams_file, overrides):
    """Raises ``ValueError`` for a command-line override whose type cannot be the YAML default's
    (``--batch_size abc`` where the YAML has ``batch_size: 32``), before anything runs."""
    # parsed as hyperpyyaml parses them (ruamel, YAML 1.2: "1e-3" is a number, not a string)
    given = _plain_yaml().load(overrides) if overrides else None
    if not isinstance(given, dict):
        return
    # The file's own literal values, read without resolving anything: a `!PLACEHOLDER` (which
    # the overrides fill) would stop the resolution, and a `!ref` default has no type to keep.
    with open(hparams_file, encoding="utf-8") as fin:
        defaults = _plain_yaml().load(fin) or {}
    for key, value in given.items():
        default = defaults.get(key)
        if key in SEVERAL_TYPES:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            expected = "True or False"
        elif isinstance(default, int | float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            expected = "a number"
        elif isinstance(default, list):
            # a string is not wrapped: "q_proj" would otherwise be taken letter by letter
            ok = isinstance(value, list)
            expected = f"a list, e.g. --{key}=[{value}]" if isinstance(value, str) else "a list"
        else:
            continue
        if not ok:
            raise ValueError(
                f"--{key}={value!r}: expected {expected} (the default in {hparams_file} is "
                f"{key}: {default}). Fix the value on the command line."
            )


# The values the recipes can run with, for the keys a YAML has: (type, smallest value, whether
# the value must be above it, whether null is allowed). Checked on the values a run gets (the
# YAML's, with the overrides), so a bad one is named with its key before any work, instead of
# surfacing later in a key derived from it ("total_steps=-4") or as a ZeroDivisionError.
VALUE_RANGES = {
    "number_of_epochs": (int, 0, True, False),
    "batch_size": (int, 0, True, False),
    "eval_batch_size": (int, 0, True, False),
    "grad_accumulation_factor": (int, 0, True, False),
    "num_workers": (int, 0, False, False),
    "sample_rate": (int, 0, True, False),
    "n_train_mixtures": (int, 0, True, False),
    "total_steps": (int, 0, True, True),
    "warmup_steps": (int, 0, False, True),
    "margin_hold_steps": (int, 0, False, True),
    "margin_ramp_steps": (int, 0, False, True),
    "segment_seconds": (float, 0, True, False),
    "max_valid_seconds": (float, 0, True, False),
    "eval_chunk_seconds": (float, 0, True, False),
    "lr": (float, 0, True, False),
}


def _range_problem(value, kind, low, strict, nullable):
    """What is wrong with ``value`` for a key of :data:`VALUE_RANGES`, or None."""
    if value is None and nullable:
        return None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    whole = kind is float or (is_number and float(value).is_integer())
    if is_number and whole and (value > low if strict else value >= low):
        return None
    word = "a whole number" if kind is int else "a number"
    bound = f"above {low}" if strict else f"at least {low}"
    return f"expected {word} {bound}" + (" (or null)" if nullable else "")


def check_override_values(hparams_file, overrides):
    """Raises ``ValueError`` naming the key when a value of :data:`VALUE_RANGES` (as given on
    the command line, or in the YAML) is out of its range, before anything runs."""
    given = _plain_yaml().load(overrides) if overrides else None
    given = given if isinstance(given, dict) else {}
    values = plain_values(hparams_file, overrides)
    for key, (kind, low, strict, nullable) in VALUE_RANGES.items():
        if key not in values:
            continue
        problem = _range_problem(values[key], kind, low, strict, nullable)
        if problem is None:
            continue
        where = (
            f"--{key}={given[key]!r}"
            if key in given
            else f"{key}: {values[key]!r} (in {hparams_file} or a value it refers to)"
        )
        raise ValueError(f"{where}: {problem}. Fix the value on the command line.")


def ensure_writable(folder, what="output folder", option="--output_folder"):
    """Creates ``folder`` if needed and checks a file can be written in it; raises one clear
    ``PermissionError`` naming the folder and the option to change otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"Cannot write to the {what} {folder} ({err.strerror or err}): pass "
            f"{option}=<a writable folder>."
        ) from err
    return folder


def lock_output_folder(folder, option="--output_folder"):
    """Takes an exclusive lock on ``folder`` for the rest of this process's life, or raises
    ``RuntimeError`` naming the process that holds it.

    The lock is an ``fcntl.flock`` on ``<folder>/.run.lock``: the operating system releases it
    when the process ends however it ends (exit, exception, ``kill -9``), so a lock left by a
    dead process never blocks a rerun. Processes forked from this one do not hold it
    (:func:`_drop_in_child`). (Some network file systems do not support ``flock``;
    there the lock is not enforced.)
    """
    folder = Path(folder).resolve()
    if folder in _held_locks:
        return
    lock_file = open(
        folder / LOCK_NAME, "a+", encoding="utf-8"
    )  # held open: the lock lives as long as the file
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "another process"
        lock_file.close()
        raise RuntimeError(
            f"{folder} is in use by a running job ({holder}). Two runs in one output folder "
            f"would overwrite each other's files: wait for it to finish, or pass "
            f"{option}=<another folder>."
        ) from err
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(
        f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    lock_file.flush()
    _held_locks[folder] = lock_file
    os.register_at_fork(after_in_child=lambda: _drop_in_child(lock_file.fileno()))


def _drop_in_child(fd):
    """In a process forked from the lock holder (a DataLoader worker, a metric pool worker):
    the lock's file descriptor is pointed at ``/dev/null``, so that the lock is the holder's
    alone. Otherwise a worker left running for a moment after its parent was killed (``kill
    -9``; it exits once it sees its parent gone) still holds the lock and refuses the rerun."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, fd)
    os.close(null)


def guard_output_folder(folder, option="--output_folder"):
    """The one output-folder guard of every script that writes results: writable, then locked
    (by the main process only under ``torchrun``: the ranks of one job share the folder).
    ``option`` is the command-line option the error messages tell the user to change."""
    ensure_writable(folder, option=option)
    if if_main_process():
        lock_output_folder(folder, option=option)


def start_experiment(argv):
    """SpeechBrain's recipe start: parse ``hparams.yaml --key=value ...``, check the overrides'
    types and the ranges of the values that have one (:data:`VALUE_RANGES`), guard the output
    folder (before any model is built or any audio scanned), join the DDP group when launched
    by ``torchrun`` (SpeechBrain refuses to start under torchrun without it), load the YAML with the overrides and create the experiment folder (with a copy of the
    resolved YAML, so every result can be traced to its configuration).

    Returns
    -------
    hparams_file, run_opts, overrides, hparams
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    check_override_types(hparams_file, overrides)
    check_override_values(hparams_file, overrides)
    sb.utils.distributed.ddp_init_group(run_opts)
    guard_output_folder(plain_values(hparams_file, overrides)["output_folder"])
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    return hparams_file, run_opts, overrides, hparams

#!/usr/bin/env python3
"""Runs a script as ``python <script> <args>`` would, recording every file it opens outside the
allowed folders (through Python's ``open`` audit event: ``open``, ``io.open``, ``os.open``, module
imports), and writes them, one per line, to the report file when it ends::

    python tests/audit_open.py REPORT recipes/speaker/train.py hparams/x.yaml --k=v ...
    python tests/audit_open.py REPORT -m sepid.tiny wavlm --out results/m

or, for a program and every Python process it starts (the demo driver and its stages), with
``tests/audit`` first on ``PYTHONPATH`` and ``SEPID_AUDIT_OPEN`` naming a folder: each process
writes its report to ``<folder>/<pid>.txt`` (``tests/audit/sitecustomize.py``).

Allowed: the repository (its ``.venv`` included), the Python installation the interpreter runs
from (its standard library), ``/dev``, ``/proc`` and ``/sys``, and reading (not writing) the
system fonts. Anything else (a home-folder cache, a system-wide data set, ``/tmp``) is reported. Opens done by C code that bypasses Python
(a native library reading its own files) are not seen.
"""

import atexit
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = tuple(
    os.path.join(os.path.realpath(p), "")
    for p in {str(ROOT), sys.base_prefix, sys.base_exec_prefix, "/dev", "/proc", "/sys"}
)


# Read-only system data a library may read (matplotlib builds its font list from the system
# fonts the first time it runs with an empty MPLCONFIGDIR). Writing there is still reported.
READ_ONLY = ("/usr/share/fonts/",)


def _writes(mode, flags):
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))


def install(report):
    """Records, from now on, every file this process opens outside the allowed folders, and
    writes them to ``report`` (one per line) when the process ends; ``report`` may be a function
    of the process id (a forked process records what it opens after the fork, in a report of its
    own: tests/forkserver.py's commands)."""
    outside = set()
    os.register_at_fork(after_in_child=outside.clear)

    def hook(event, event_args):
        if event != "open":
            return
        path = event_args[0]
        if isinstance(path, int) or path is None:  # an already open descriptor
            return
        path = os.path.realpath(os.fsdecode(path))
        if path.startswith(ALLOWED) or path == str(ROOT):  # the repository's folder itself
            return
        if path.startswith(READ_ONLY) and not _writes(event_args[1], event_args[2] or 0):
            return
        outside.add(path)

    def write_report():
        text = "".join(f"{p}\n" for p in sorted(outside))  # before this open adds to it
        path = report(os.getpid()) if callable(report) else report
        if not os.path.isdir(os.path.dirname(path) or "."):
            return  # a fork server ending after its session removed the folder
        with open(path, "w", encoding="utf-8") as fout:
            fout.write(text)

    atexit.register(write_report)
    sys.addaudithook(hook)


def main():
    report, script, *args = sys.argv[1:]
    if script == "-m":  # python -m module args...
        module, *args = args
        sys.argv = [module, *args]
        sys.path[0] = os.getcwd()
        install(report)
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    install(report)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()

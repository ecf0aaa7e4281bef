"""Runs the tests' ``python script.py ...`` and ``python -m module ...`` commands in processes
forked from one interpreter that imported torch, SpeechBrain and transformers once, instead of a
new interpreter that imports them again (about 6 s of CPU per command, most of the suite's
process start-up cost).

Each command still gets a process of its own, started from the repository root: a fork of the
server, with the caller's environment, ``sys.argv`` and ``sys.path[0]`` as ``python`` sets them,
stdin from ``/dev/null``, stdout and stderr to files the caller reads. The script runs as
``__main__`` through ``runpy`` (as ``tests/crash.py`` runs a recipe) and the process ends by the
interpreter's own exit path: an uncaught exception goes through ``sys.excepthook`` (SpeechBrain's,
where the recipe installed it) and exits 1, ``SystemExit`` gives its code, atexit handlers run, a
signal gives ``-signal``. Nothing of the repository is imported before the fork, only third-party
packages, so the code under test is read from disk by each command as before.

What a fresh interpreter does differently, and why it does not matter here: the third-party
modules were imported before the command's environment was set, so a variable read at import
(``HF_ENDPOINT``, ``OMP_NUM_THREADS``, ``PYTHONPATH``) must not differ from the server's: the
client (``tests.helpers.run_python``) forks only commands whose environment equals the server's in
the variables such imports may read (``tests.helpers._READ_AT_IMPORT``) and runs the rest (an
``env=...`` of their own, ``python -c``) as plain subprocesses. ``SEPID_TESTS_FORKSERVER=0`` runs
every command as a plain subprocess (a fresh interpreter each).

Protocol (one command at a time): the client writes a JSON line ``{"argv", "env", "stdout",
"stderr"}``; the server forks, answers ``{"pid"}``, waits, and answers ``{"returncode"}``.
"""

import json
import os
import random
import sys

# what the recipes, the export and the data preparation import; a fork is safe here because
# these imports leave no Python thread running (checked below) and torch's thread pool is rebuilt
# in the child on first use
PRELOAD = (
    "numpy",
    "scipy.signal",
    "soundfile",
    "torch",
    "torchaudio",
    "torch.distributed.run",
    "hyperpyyaml",
    "speechbrain",
    "speechbrain.core",
    "speechbrain.inference",
    "speechbrain.lobes.models.dual_path",
    "transformers",
    "transformers.models.wavlm.modeling_wavlm",
)


def _run_command(request):
    """In the forked child: becomes the command (does not return; the caller's frames unwind
    through the interpreter's normal exit)."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.clear()
    os.environ.update(request["env"])
    # a fresh interpreter seeds these from the OS, not from the server's state
    random.seed()
    import numpy as np

    np.random.seed()
    import runpy

    argv = request["argv"]
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]  # runpy sets argv[0] to the module's file
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")
    sys.exit(0)


def serve():
    import importlib
    import threading

    for name in PRELOAD:
        importlib.import_module(name)
    assert threading.active_count() == 1, threading.enumerate()
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # nothing the server prints can corrupt the replies
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            replies.close()
            _run_command(request)
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()

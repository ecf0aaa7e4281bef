"""Helpers shared by the tests."""

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import speechbrain as sb
from filelock import FileLock
from hyperpyyaml import load_hyperpyyaml

from data_prep.make_mixtures import make_mixtures
from sepid.training.overrides import override_args
from tests import forkclient

ROOT = Path(__file__).resolve().parents[1]


class _ForkServer:
    """The session's main fork server (tests/forkserver.py), started on first use with the
    environment the session started with, and the shim (tests/forkclient.py) its commands see as
    ``sys.executable``."""

    def __init__(self):
        self.proc, self.folder = None, None
        self.new_interpreters = 0  # commands run as a new interpreter

    def ensure(self, env=None):
        """Starts the server (again, if it died), with environment ``env`` (this process's when
        None); puts its socket and the shim in this process's environment, for every process it
        starts. A pytest-xdist worker uses the server of its controller
        (``tests/conftest.py::pytest_configure``), found in the environment it inherited, so that
        the workers share its per-environment servers."""
        os.environ[forkclient.CLIENT_VAR] = self.client()  # whom its commands count for
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is None and os.path.exists(os.environ.get(forkclient.SOCKET_VAR, "")):
            return  # the controller's, started before this worker
        self.folder = Path(tempfile.mkdtemp(prefix="sepid-fork-"))
        shim = self.folder / "python"
        source = (ROOT / "tests" / "forkclient.py").read_text(encoding="utf-8")
        shim.write_text(f"#!{sys.executable} -IS\n{source}", encoding="utf-8")
        shim.chmod(0o755)
        with open(self.folder / "server.log", "w", encoding="utf-8") as log:
            self.proc = forkclient.start_server(str(self.folder / "0.sock"), env=env, log=log)
        os.environ[forkclient.SOCKET_VAR] = str(self.folder / "0.sock")
        os.environ[forkclient.SHIM_VAR] = str(shim)
        atexit.register(self.close)

    def close(self):
        """Ends the servers and waits for them (they wait for every command), so that the
        commands' CPU time counts in this process's, as a command's run as a child would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
            shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def client():
        """Whom this process's commands count for: its pytest-xdist worker, else what it
        inherited from the process that started it, else ``main``."""
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        return worker or os.environ.get(forkclient.CLIENT_VAR) or "main"

    def per_server(self):
        """``{server socket: commands forked for this process (and the commands it started)}``."""
        if not os.path.exists(os.environ.get(forkclient.SOCKET_VAR, "")):
            return {}
        conn = forkclient.Connection.to(os.environ[forkclient.SOCKET_VAR])
        conn.send({"counts": self.client()})
        forked = conn.reply()
        conn.close()
        return forked

    def counts(self):
        """``{"forked": n, "servers": n, "new interpreter": n}`` so far, for this process: the
        commands forked, the servers that forked them, the commands run as new interpreters."""
        forked = self.per_server()
        return {
            "forked": sum(forked.values()),
            "servers": sum(1 for n in forked.values() if n),
            "new interpreter": self.new_interpreters,
        }

    def run(self, argv, timeout):
        """``python *argv`` with this process's environment, forked; a ``CompletedProcess``."""
        self.ensure()
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            with open(os.devnull, "rb") as stdin, open(out, "wb") as fout, open(err, "wb") as ferr:
                fds = (stdin.fileno(), fout.fileno(), ferr.fileno())
                conn, pid = forkclient.start(argv, dict(os.environ), str(ROOT), fds)
            done = conn.reply(timeout)
            if done is None:
                os.kill(pid, signal.SIGKILL)
                conn.reply()
            conn.close()
            stdout = out.read_text(encoding="utf-8", errors="replace")
            stderr = err.read_text(encoding="utf-8", errors="replace")
        if done is None:
            raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr)
        return subprocess.CompletedProcess(
            [sys.executable, *argv], done["returncode"], stdout, stderr
        )


_FORK_SERVER = _ForkServer()


def run_python(args, timeout=600, env=None):
    """``python *args`` from the repository root, as ``subprocess.run(..., capture_output=True,
    text=True)`` runs it; returns the ``CompletedProcess``. A script (``path.py ...``) or module
    (``-m name ...``) with this process's environment runs in a fork of tests/forkserver.py's
    server for the variables of that environment its imports may read (the third-party imports
    done once per such environment and session); anything else (``python -c``, an ``env`` of its
    own: a server for a one-off environment costs more than the interpreter it replaces, since it
    imports all the server preloads), or any command with ``SEPID_TESTS_FORKSERVER=0`` in this
    process's environment, in a new interpreter."""
    args = [str(a) for a in args]
    forked = env is None and os.environ.get("SEPID_TESTS_FORKSERVER", "1") != "0"
    if forked and forkclient.forkable(args)[0] == args:
        return _FORK_SERVER.run(args, timeout)
    _FORK_SERVER.new_interpreters += 1
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def once(tmp_path_factory, name, make):
    """``make()`` (a JSON value: paths as strings) run once per test session: on pytest-xdist's
    workers, by the first that asks, under a file lock in the session's shared temporary folder,
    the others reading its result (or failing at once if it failed, rather than failing again
    the same way: the error is reported with the first worker's test); without workers, simply
    called."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make()
    shared = tmp_path_factory.getbasetemp().parent
    record = shared / f"{name}.json"
    with FileLock(shared / f"{name}.lock"):
        if not record.is_file():
            done = {"failed": os.environ["PYTEST_XDIST_WORKER"]}
            try:
                done = {"value": make()}
            finally:
                record.write_text(json.dumps(done))
    done = json.loads(record.read_text())
    if "failed" in done:
        pytest.fail(f"session fixture {name} failed on worker {done['failed']} (see its error)")
    return done["value"]


# test files that must run on one pytest-xdist worker: the demo run's (conftest.demo_driver_run
# removes its folder when its worker's session ends, so it is not shared through :func:`once`)
SAME_WORKER = {"demo": ("tests/recipes/test_demo_driver.py", "tests/recipes/test_demo_speaker.py")}


def scheduling_unit(nodeid):
    """What tests/conftest.py's scheduler sends to a worker as one unit: the test alone, or the
    name of its :data:`SAME_WORKER` group."""
    path = nodeid.split("::")[0]
    return next((group for group, files in SAME_WORKER.items() if path in files), nodeid)


def python_on_path(env):
    """``env`` with the fork server's ``python`` (the shim) first on ``PATH``, so that a shell
    command's ``python script.py ...`` is forked too (unless ``SEPID_TESTS_FORKSERVER=0``)."""
    if os.environ.get("SEPID_TESTS_FORKSERVER", "1") == "0":
        return env
    _FORK_SERVER.ensure()
    shim = os.environ[forkclient.SHIM_VAR]
    return {**env, "PATH": os.pathsep.join([os.path.dirname(shim), env.get("PATH", "")])}


def run_script(cmd, timeout=600):
    """Runs a recipe script as a user would (from the repository root); returns its output."""
    proc = run_python(cmd, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@dataclass(frozen=True)
class Recipe:
    """A real ``hparams/*.yaml`` run with the tests' overrides file (``tests/hparams/``), as the
    demo runs it with its own: ``fixed`` are ``--key=value`` arguments every run gets (the session's
    tiny models), and a test's ``--key=value`` arguments replace the file's values of the same key.
    """

    yaml: str
    overrides: str
    fixed: tuple = field(default_factory=tuple)

    def args(self, *extra):
        """``[yaml, --key=value ...]``: the overrides file, ``fixed``, then ``extra`` (``--key
        value`` is taken as ``--key=value``; a flag without a value follows unchanged)."""
        pairs, flags, extra = [], [], [str(a) for a in extra]
        while extra:
            arg = extra.pop(0)
            if "=" not in arg and extra and not extra[0].startswith("--"):
                arg = f"{arg}={extra.pop(0)}"
            (pairs if "=" in arg else flags).append(arg)
        return [self.yaml, *override_args(ROOT / self.overrides, [*self.fixed, *pairs]), *flags]

    def command(self, script, *extra):
        """``[script, yaml, --key=value ...]`` for :func:`run_script`."""
        return [script, *self.args(*extra)]

    def load(self, *extra):
        """The hparams a script gets from :meth:`command` (``sb.parse_arguments`` then
        ``load_hyperpyyaml``), loaded in this process."""
        _, _, overrides = sb.parse_arguments(self.args(*extra))
        with open(ROOT / self.yaml, encoding="utf-8") as fin:
            return load_hyperpyyaml(fin, overrides)


CORPUS = ROOT / "tests/samples/librispeech-mini/test-other"


def held_out_test_mixtures(speaker_experiment, folder, n, sample_rate=None):
    """``n`` test mixtures of the held-out (identification-test) utterances of the speaker
    experiment's 5 training speakers, written by the real make_mixtures; returns ``folder``."""
    make_mixtures(
        Path(speaker_experiment) / "prep" / "iden_test.csv",
        CORPUS,
        folder,
        n_mix={"train": 0, "valid": 0, "test": n},
        split_speakers={"train": 0, "valid": 0, "test": 5},
        sample_rate=sample_rate,
    )
    return folder


# Shorter than the demo (see docs/demo.md): the first 50 training speakers, 20 epochs of
# 1.5 s crops in batches of 8 (120 steps), no fbank baseline. Chosen, like the demo's settings,
# on held-out train-clean-100 speakers (tests/benchmarks/bench_demo_speaker.py --split dev
# --tag ci-s50 --n_train_speakers 50; its records are quoted in tests/recipes/test_demo_speaker.py).
DEMO_SPEAKER_SHORT = [
    "--speakers=50",
    "--number_of_epochs=20",
    "--batch_size=8",
    "--segment_seconds=1.5",
    "--fbank_baseline=False",
]

# The demo's stages, shortened: the speaker stage on DEMO_SPEAKER_SHORT (50
# training speakers, 20 epochs of 1.5 s crops, no fbank baseline: the one speaker run both files
# check), 6 test mixtures, one short joint epoch, no PESQ/STOI (the slowest metrics).
DEMO_SMALL = [
    *(f"speaker:{arg}" for arg in DEMO_SPEAKER_SHORT),
    "mixtures:--n_test=6",
    "separation:--separation_metrics=[si_sdr, sdr]",
    "joint:--number_of_epochs=1",
    "joint:--n_train_mixtures=8",
    "joint:--n_valid_mixtures=2",
    "joint:--separation_metrics=[si_sdr, sdr]",
]


def run_demo_driver(out, *args, audit=None):
    """``python recipes/demo/run.py --output_folder=out`` on :data:`DEMO_SMALL` and ``args``, a
    process of its own (its environment is not the session's) whose stages are processes of their
    own, each forked from tests/forkserver.py's server for the stages' environment (unless
    ``SEPID_TESTS_FORKSERVER=0``); with ``audit``, a folder, every Python process of the demo
    records there the files it opens outside the repository."""
    env = {**os.environ}
    if audit is not None:  # every Python process of the demo records what it opens
        audit.mkdir(parents=True, exist_ok=True)
        env["SEPID_AUDIT_OPEN"] = str(audit)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "audit"), str(ROOT)])
    python = sys.executable
    if os.environ.get("SEPID_TESTS_FORKSERVER", "1") != "0":
        _FORK_SERVER.ensure()
        python, env = os.environ[forkclient.SHIM_VAR], {**os.environ, **env}
    cmd = [python, "recipes/demo/run.py", f"--output_folder={out}"]
    cmd += [f"--stage_override={o}" for o in DEMO_SMALL] + list(args)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)

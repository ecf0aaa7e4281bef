"""Helpers shared by the tests."""

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from data_prep.make_mixtures import make_mixtures
from sepid.training.overrides import override_args

ROOT = Path(__file__).resolve().parents[1]


class _ForkServer:
    """The client of tests/forkserver.py: one server per test session, started on first use
    with ``env``, the environment the session started with."""

    def __init__(self, env):
        self.proc, self.pending, self.env = None, b"", env
        self.counts = {"forked": 0, "new interpreter": 0}  # commands run each way

    def serves(self):
        """Whether a command with this process's environment may run forked: only when it is
        the server's in the variables its imports may read (:data:`_READ_AT_IMPORT`)."""
        return _comparable(os.environ) == _comparable(self.env)

    def close(self):
        """Ends the server and waits for it, so that its CPU time (and its commands') counts in
        this process's, as a command's run as a child of this process would."""
        self.proc.stdin.close()
        self.proc.wait()

    def reply(self, timeout=None):
        """The server's next JSON line, or None after ``timeout`` seconds without one."""
        while b"\n" not in self.pending:
            if not select.select([self.proc.stdout], [], [], timeout)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"tests/forkserver.py stopped (exit {self.proc.wait()})")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv, timeout):
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "tests/forkserver.py"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                env=self.env,
            )
            self.pending = b""
            atexit.register(self.close)
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {
                "argv": argv,
                "env": dict(os.environ),
                "stdout": str(out),
                "stderr": str(err),
            }
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            pid = self.reply()["pid"]
            done = self.reply(timeout)
            if done is None:
                os.kill(pid, signal.SIGKILL)
                self.reply()
            stdout = out.read_text(encoding="utf-8", errors="replace")
            stderr = err.read_text(encoding="utf-8", errors="replace")
        if done is None:
            raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr)
        return subprocess.CompletedProcess(
            [sys.executable, *argv], done["returncode"], stdout, stderr
        )


# Environment variables the server's imports may read (thread pools, loader, interpreter start-up,
# the Hub's and transformers' constants, SpeechBrain's log level): a command whose value of one of
# these differs from the server's runs in a new interpreter. Others (PATH, or what libraries and
# pytest set in this process as the suite runs: PYTEST_CURRENT_TEST, SB_GLOBAL_SEED, joblib's
# KMP_* for Intel's OpenMP, which torch's wheels do not use: they load GNU libgomp) are read at
# run time, and the command gets their current values.
_READ_AT_IMPORT = (
    "OMP_",
    "GOMP_",
    "MKL_",
    "OPENBLAS_",
    "LD_",
    "PYTHON",
    "TORCH",
    "PYTORCH_",
    "CUDA_",
    "HF_",
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "SB_LOG_LEVEL",
    "MPL",
)


def _comparable(env):
    return {k: v for k, v in env.items() if k.startswith(_READ_AT_IMPORT)}


_FORK_SERVER = _ForkServer(env=dict(os.environ))


def run_python(args, timeout=600, env=None):
    """``python *args`` from the repository root, as ``subprocess.run(..., capture_output=True,
    text=True)`` runs it; returns the ``CompletedProcess``. A script (``path.py ...``) or module
    (``-m name ...``) with this process's environment runs in a fork of tests/forkserver.py (the
    third-party imports done once per session); anything else, an ``env`` of its own, a variable
    the server's imports may read changed since it started (``monkeypatch.setenv("OMP_NUM_THREADS",
    ...)``, see :data:`_READ_AT_IMPORT`), or ``SEPID_TESTS_FORKSERVER=0`` in the environment, in a
    new interpreter."""
    args = [str(a) for a in args]
    forked = env is None and os.environ.get("SEPID_TESTS_FORKSERVER", "1") != "0"
    forked = forked and _FORK_SERVER.serves()
    if forked and (args[0].endswith(".py") or (args[0] == "-m" and len(args) > 1)):
        _FORK_SERVER.counts["forked"] += 1
        return _FORK_SERVER.run(args, timeout)
    _FORK_SERVER.counts["new interpreter"] += 1
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
    """``python recipes/demo/run.py --output_folder=out`` on :data:`DEMO_SMALL` and ``args``, in a
    new interpreter (the demo's stages are processes of their own); with ``audit``, a folder,
    every Python process of the demo records there the files it opens outside the repository."""
    env = {**os.environ}
    if audit is not None:  # every Python process of the demo records what it opens
        audit.mkdir(parents=True, exist_ok=True)
        env["SEPID_AUDIT_OPEN"] = str(audit)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "audit"), str(ROOT)])
    cmd = [sys.executable, "recipes/demo/run.py", f"--output_folder={out}"]
    cmd += [f"--stage_override={o}" for o in DEMO_SMALL] + list(args)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)

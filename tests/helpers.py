"""Helpers shared by the tests."""

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

from data_prep.make_mixtures import make_mixtures
from sepid.training.overrides import override_args

ROOT = Path(__file__).resolve().parents[1]


def run_script(cmd, timeout=600):
    """Runs a recipe script as a user would (from the repository root); returns its output."""
    proc = subprocess.run(
        [sys.executable, *map(str, cmd)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
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

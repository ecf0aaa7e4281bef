"""Helpers shared by the tests."""

import subprocess
import sys
from pathlib import Path

from data_prep.make_mixtures import make_mixtures

ROOT = Path(__file__).resolve().parents[1]


def run_script(cmd, timeout=600):
    """Runs a recipe script as a user would (from the repository root); returns its output."""
    proc = subprocess.run(
        [sys.executable, *map(str, cmd)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


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

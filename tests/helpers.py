"""Helpers shared by the tests."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(cmd, timeout=600):
    """Runs a recipe script as a user would (from the repository root); returns its output."""
    proc = subprocess.run(
        [sys.executable, *map(str, cmd)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr

"""tests/forkserver.py, through which the suite runs its ``python script.py`` commands: a forked
command behaves as a new interpreter does (arguments, ``__main__``, path, exit codes, tracebacks,
signals, atexit, timeouts), and a command whose environment is not the server's runs in a new
interpreter."""

import os
import subprocess
import sys

import pytest

from tests.helpers import _FORK_SERVER as SERVER
from tests.helpers import ROOT, run_python

SCRIPT = """
import atexit, os, signal, sys
print("argv", sys.argv[1:], __name__, sys.path[0] == os.path.dirname(os.path.abspath(__file__)))
print("cwd", os.getcwd())
print("stdin", repr(sys.stdin.read()))
atexit.register(lambda: print("atexit ran", flush=True))
mode = sys.argv[1]
if mode == "raise":
    raise ValueError("a clear error")
if mode == "exit":
    sys.exit(3)
if mode == "kill":
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "ppid":
    print("ppid", os.getppid(), os.environ.get("SEPID_FORKSERVER_PROBE"))
if mode == "sleep":
    import time
    time.sleep(60)
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("forkserver") / "script.py"
    path.write_text(SCRIPT)
    return path


def fresh(args):
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("mode", ["ok", "raise", "exit", "kill"])
def test_a_forked_command_behaves_as_a_new_interpreter(script, mode):
    forked, new = run_python([script, mode, "x y"]), fresh([script, mode, "x y"])
    assert forked.returncode == new.returncode == {"ok": 0, "raise": 1, "exit": 3, "kill": -9}[mode]
    assert forked.stdout == new.stdout
    assert f"argv ['{mode}', 'x y'] __main__ True" in forked.stdout
    assert f"cwd {ROOT}" in forked.stdout and "stdin ''" in forked.stdout
    assert ("atexit ran" in forked.stdout) == (mode != "kill")
    assert forked.args == new.args
    if mode == "raise":  # the traceback ends as the interpreter's does
        assert forked.stderr.endswith(new.stderr.splitlines()[-1] + "\n")
        assert forked.stderr.startswith("Traceback (most recent call last):")


def test_a_module_runs_as_python_dash_m():
    forked, new = run_python(["-m", "sepid.tiny", "--help"]), fresh(["-m", "sepid.tiny", "--help"])
    assert forked.returncode == new.returncode == 0
    assert forked.stdout == new.stdout


def test_a_command_past_its_timeout_is_killed(script):
    with pytest.raises(subprocess.TimeoutExpired):
        run_python([script, "sleep"], timeout=1)
    assert run_python([script, "ok"]).returncode == 0  # the server serves the next command


def test_another_environment_gets_a_new_interpreter(script, monkeypatch):
    """What the server imported read its environment: a command whose environment differs in a
    variable those imports may read is not forked from it but started as a new interpreter, a
    child of this process."""
    # nothing earlier in the session left such a variable changed (else nothing is forked)
    changed = {k for k in {*os.environ, *SERVER.env} if os.environ.get(k) != SERVER.env.get(k)}
    assert SERVER.serves(), f"changed since the session started: {sorted(changed)}"
    first = run_python([script, "ppid"]).stdout
    assert f"ppid {SERVER.proc.pid} None" in first  # forked from the server
    # a variable nothing imported reads: forked, and the command sees it
    monkeypatch.setenv("SEPID_FORKSERVER_PROBE", "1")
    assert f"ppid {SERVER.proc.pid} 1" in run_python([script, "ppid"]).stdout
    # one that torch's thread pool read when the server imported it: a new interpreter
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert f"ppid {os.getpid()} 1" in run_python([script, "ppid"]).stdout

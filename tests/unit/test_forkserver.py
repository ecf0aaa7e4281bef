"""tests/forkserver.py, through which the suite runs its ``python script.py`` commands: a forked
command behaves as a new interpreter does (arguments, ``__main__``, path, exit codes, tracebacks,
signals, atexit, timeouts), and a command whose environment is not the server's runs in a new
interpreter."""

import os
import socket
import subprocess
import sys

import pytest

from tests import forkclient
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
if mode == "threads":
    import hashlib, torch
    torch.manual_seed(0)
    x = torch.randn(256, 256)
    digest = hashlib.sha1((x @ x).numpy().tobytes()).hexdigest()
    print("threads", torch.get_num_threads(), digest)
if mode == "spawn":
    import subprocess
    child = subprocess.run([sys.executable, __file__, sys.argv[2], "x y"], capture_output=True, text=True)
    print("child", child.stdout.replace("argv", "child argv"), "child exit", child.returncode)
if mode == "shim-signals":
    import subprocess, time
    from pathlib import Path
    pidfile = Path(sys.argv[2]) / "pid"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pidfile.unlink(missing_ok=True)
        child = subprocess.Popen([sys.executable, __file__, "pid-sleep", str(pidfile)])
        while not pidfile.exists() or not pidfile.read_text().endswith("\\n"):
            time.sleep(0.05)  # until the command has started and written its pid
        pid = int(pidfile.read_text())
        child.send_signal(sig)
        code = child.wait()
        if sig == signal.SIGTERM:
            print("terminated", code)
        else:
            for _ in range(600):  # the server's watcher kills the command when the shim is gone
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                raise SystemExit("the command outlived its killed shim")
            print("killed", code, "command gone True")
if mode == "open":
    open(sys.argv[2], "rb").close()
    print("pid", os.getpid())
if mode == "pid-sleep":
    import time
    from pathlib import Path
    Path(sys.argv[2]).write_text(f"{os.getpid()}\\n")
    time.sleep(120)
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


def test_a_client_gone_before_its_request_does_not_stop_the_server(script):
    """A client that connects and closes without asking (a shim killed just after connecting)
    leaves the server serving the next command."""
    SERVER.ensure()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(os.environ[forkclient.SOCKET_VAR])
    assert run_python([script, "ok"]).returncode == 0


def test_another_import_time_environment_gets_its_own_server(script, monkeypatch):
    """What a server imported read its environment: a command whose environment differs in a
    variable those imports may read runs forked from a server started with its values (torchrun's
    ranks: ``OMP_NUM_THREADS=1``), and computes as a new interpreter with them does; a variable
    read at run time does not start another server."""
    before = SERVER.counts()
    monkeypatch.setenv("SEPID_FORKSERVER_PROBE", "1")  # read at run time
    assert "ppid" in run_python([script, "ppid"]).stdout
    assert SERVER.counts()["servers"] == before["servers"] or before["servers"] == 0
    servers = SERVER.counts()["servers"]
    # not the session's value (1 when pytest-xdist's workers run it: tests/conftest.py)
    threads = "2" if os.environ.get("OMP_NUM_THREADS") == "1" else "1"
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    forked, new = run_python([script, "threads"]), fresh([script, "threads"])
    assert forked.returncode == new.returncode == 0, forked.stderr
    assert forked.stdout == new.stdout and f"threads {threads} " in forked.stdout
    after = SERVER.counts()
    assert after["servers"] in (servers, servers + 1) and after["forked"] > before["forked"]
    assert after["new interpreter"] == before["new interpreter"]


@pytest.mark.parametrize("mode", ["ok", "exit", "kill"])
def test_the_python_a_forked_command_starts_is_forked_too(script, mode):
    """``sys.executable`` of a forked command is the shim (tests/forkclient.py): a command it
    starts (torchrun's ranks, the demo's stages) is forked as well, with the shim's stdout and
    exit code (a signal included) as a new interpreter's."""
    before = SERVER.counts()["forked"]
    forked, new = run_python([script, "spawn", mode]), fresh([script, "spawn", mode])
    assert forked.returncode == new.returncode == 0, forked.stderr
    assert forked.stdout == new.stdout
    code = {"ok": 0, "exit": 3, "kill": -9}[mode]
    assert (
        f"child exit {code}" in forked.stdout and f"child argv ['{mode}', 'x y']" in forked.stdout
    )
    assert SERVER.counts()["forked"] == before + 2


def test_a_signalled_shim_signals_its_command_and_a_killed_one_takes_it_along(script, tmp_path):
    """torchrun ends its ranks with SIGTERM to each rank's process (here the shim): the command
    gets it; a shim killed outright (SIGKILL) takes its command along."""
    proc = run_python([script, "shim-signals", tmp_path])
    assert proc.returncode == 0, proc.stderr
    assert "terminated -15" in proc.stdout and "killed -9 command gone True" in proc.stdout


def test_a_forked_command_under_the_open_audit_reports_what_it_opened(
    script, tmp_path, monkeypatch
):
    """The demo's audit (tests/audit/sitecustomize.py) in a forked command: the command's own
    report lists the file it opened outside the repository (not the server's imports)."""
    monkeypatch.setenv("SEPID_AUDIT_OPEN", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests" / "audit"), str(ROOT)]))
    proc = run_python([script, "open", "/etc/hostname"])
    assert proc.returncode == 0, proc.stderr
    pid = proc.stdout.split("pid ")[1].split()[0]
    assert "/etc/hostname" in (tmp_path / f"{pid}.txt").read_text().split()
    assert "open" in (tmp_path / f"{pid}.cmd").read_text()

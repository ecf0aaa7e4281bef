"""The client side of tests/forkserver.py, standard library only: :func:`start_server` starts a
server, :func:`start` sends a ``python script.py ...`` / ``python -m module ...`` command to the
server for its environment (its exit code follows on the connection), and run as a program (the
``python`` the forked commands see as ``sys.executable``: torchrun's ranks, the demo's stages) it is that ``python``::

    <shim> [-u] script.py args...    <shim> [-u] -m module args...

forked from the session's server for this environment, its stdin, stdout and stderr those of
the shim; the signals the shim gets (torchrun's SIGTERM) go to the command, and the shim ends
as the command did (its exit code, or killed by the same signal). If the shim is killed, the
command is killed with it (the server's process that waits for it watches the connection).
Anything else (``-c``, other interpreter options) is the real interpreter, ``exec``'d with the
same arguments and descriptors.

Messages are JSON lines over a Unix socket; a ``run`` request carries the command's stdin,
stdout and stderr descriptors (``SCM_RIGHTS``).
"""

import json
import os
import select
import signal
import socket
import sys

# Environment variables a server's imports may read (thread pools, loader, interpreter start-up,
# the Hub's and transformers' constants, SpeechBrain's log level): a command runs forked from a
# server started with the same values of these (one server per distinct set, started on first
# use), so it sees what a new interpreter with its environment would. Others (PATH, or what
# libraries and pytest set as the suite runs: PYTEST_CURRENT_TEST, SB_GLOBAL_SEED, joblib's KMP_*
# for Intel's OpenMP, which torch's wheels do not use) are read at run time, and the command gets
# its own values.
READ_AT_IMPORT = (
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
    "TMPDIR",
    "TEMP",
    "TMP",
)
# ... except these, read at run time: torchrun's per-launch and per-rank variables, its
# PYTHON_EXEC, and PYTHONUNBUFFERED (``-u``), which the forked command applies to its streams
READ_AT_RUN = ("TORCHELASTIC_", "TORCH_NCCL_", "PYTHON_EXEC", "PYTHONUNBUFFERED")

# what the shim, the clients and the forked commands read: the session's main server socket and
# the shim's path (the shim runs under the real interpreter: its own sys.executable)
SOCKET_VAR, SHIM_VAR = "SEPID_FORKSERVER_SOCKET", "SEPID_FORKSERVER_SHIM"
# whom a command counts for (tests/helpers.py sets it per pytest process; commands inherit it)
CLIENT_VAR = "SEPID_FORKSERVER_CLIENT"
SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "forkserver.py")


def import_time(env):
    """The part of ``env`` a server's imports may have read."""
    return {
        k: v
        for k, v in env.items()
        if k.startswith(READ_AT_IMPORT) and not k.startswith(READ_AT_RUN)
    }


def forkable(argv):
    """``(command, unbuffered)`` for ``python *argv`` when it is a script or a module command
    (after any ``-u``), else ``(None, False)``."""
    unbuffered = False
    while argv and argv[0] == "-u":
        unbuffered, argv = True, argv[1:]
    if argv and (argv[0] == "-m" and len(argv) > 1 or not argv[0].startswith("-")):
        return list(argv), unbuffered
    return None, False


class Connection:
    """One request's connection to a server."""

    def __init__(self, sock):
        self.sock, self.pending = sock, b""

    @classmethod
    def to(cls, path):
        """A connection to the server listening at ``path``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return cls(sock)

    def send(self, message, fds=()):
        data = json.dumps(message).encode() + b"\n"
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)

    def reply(self, timeout=None):
        """The next JSON message, or None after ``timeout`` seconds without one."""
        while b"\n" not in self.pending:
            try:
                ready = select.select([self.sock], [], [], timeout)[0]
            except InterruptedError:  # a signal the caller handles; Python retries select
                continue
            if not ready:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the fork server closed the connection")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        self.sock.close()


def start_server(path, env=None, log=None):
    """``python tests/forkserver.py path`` with environment ``env`` (this process's when None),
    its output to ``log``; returns its ``Popen`` once it listens at ``path`` (it ends when its
    stdin closes)."""
    import subprocess  # here: the shim, which imports this module, never starts a server

    ready_r, ready_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, SERVER, path, str(ready_w)],
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=log,
        env=env,
        pass_fds=(ready_w,),
    )
    os.close(ready_w)
    with os.fdopen(ready_r) as ready:
        if ready.read() != "ready\n":
            where = getattr(log, "name", "its stderr")
            raise RuntimeError(f"tests/forkserver.py {path} did not start (see {where})")
    return proc


def server_for(env):
    """The socket of the session's server for ``env`` (the main server starts it if needed)."""
    conn = Connection.to(os.environ[SOCKET_VAR])
    try:
        conn.send({"server_for": env})
        return conn.reply()["socket"]
    finally:
        conn.close()


def start(argv, env, cwd, fds, unbuffered=False):
    """Sends the command to the server for ``env``; returns ``(connection, pid)``; the command's
    ``{"returncode"}`` follows on the connection."""
    conn = Connection.to(server_for(env))
    request = {"argv": argv, "env": env, "cwd": cwd, "unbuffered": unbuffered}
    conn.send({"run": request}, fds)
    return conn, conn.reply()["pid"]


def shim(argv):
    """Runs ``python *argv`` as described in the module's docstring; does not return."""
    command, unbuffered = forkable(argv)
    if command is None or not os.path.exists(os.environ.get(SOCKET_VAR, "")):
        os.execv(sys.executable, [sys.executable, *argv])
    pid, pending = None, []

    def forward(signum, _frame):
        if pid is None:
            pending.append(signum)
        else:
            os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, forward)
    conn, pid = start(command, dict(os.environ), os.getcwd(), (0, 1, 2), unbuffered)
    for signum in pending:
        os.kill(pid, signum)
    code = conn.reply()["returncode"]
    if code < 0:  # killed by a signal: so is the shim
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    shim(sys.argv[1:])

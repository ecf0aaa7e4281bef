"""Runs the tests' ``python script.py ...`` and ``python -m module ...`` commands in processes
forked from an interpreter that imported torch, SpeechBrain and transformers once, instead of a
new interpreter that imports them again (about 9 s of CPU per command, most of the suite's
process start-up cost).

Each command still gets a process of its own: a fork of the server, with the caller's
environment, working folder, stdin, stdout and stderr (descriptors passed over the socket),
``sys.argv`` and ``sys.path[0]`` as ``python`` sets them. The script runs as ``__main__`` through
``runpy`` (as ``tests/crash.py`` runs a recipe) and the process ends by the interpreter's own exit
path: an uncaught exception goes through ``sys.excepthook`` (SpeechBrain's, where the recipe
installed it) and exits 1, ``SystemExit`` gives its code, atexit handlers run, a signal gives
``-signal``. Nothing of the repository is imported before the fork, only third-party packages, so
the code under test is read from disk by each command as before. Its ``sys.executable`` is the
shim (tests/forkclient.py), so the Python processes it starts (torchrun's ranks, the demo's
stages) are forked too.

What a fresh interpreter does differently, and why it does not matter here: the third-party
modules were imported before the command's environment was set, so a variable read at import
(``OMP_NUM_THREADS``, ``HF_HOME``, ``PYTHONPATH``: tests.forkclient.READ_AT_IMPORT) must be the
server's. So there is one server per distinct set of those values: the session's main server
(``python tests/forkserver.py SOCKET``, started by tests/helpers.py) starts another, with the
command's environment, the first time a command needs it (torchrun's ranks run with
``OMP_NUM_THREADS=1``), and ends them when its stdin closes, after waiting for every command.

Per connection, one request: ``{"run": {argv, env, cwd, unbuffered}}`` with three descriptors
(answers ``{"pid"}``, then ``{"returncode"}``; a process of the server waits for the command and
kills it if the connection closes first), ``{"server_for": env}`` (answers ``{"socket"}`` of the server for ``env``'s import-time part,
started with ``env`` if there is none), or
``{"counts": client}`` (answers, per server, the commands forked so far whose environment's
``SEPID_FORKSERVER_CLIENT`` is ``client``: the pytest-xdist workers sharing one server each count
their own).
"""

import atexit
import collections
import json
import os
import random
import select
import signal
import socket
import sys

# this script's folder is sys.path[0]
from forkclient import CLIENT_VAR, SHIM_VAR, Connection, import_time, start_server

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


def _become(request, fds, closing, path):
    """In the forked command: becomes it (does not return; the caller's frames unwind through the
    interpreter's normal exit)."""
    for fd in closing:
        os.close(fd)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        os.close(fd)
    os.chdir(request["cwd"])
    sys.path[:] = path  # as the interpreter started (imports may add folders)
    # torch.distributed.nn's import made a temporary folder for its generated modules: the
    # server's to remove when it ends, not every command's
    from torch.distributed.nn.jit import instantiator

    atexit.unregister(instantiator._TEMP_DIR.cleanup)
    instantiator._TEMP_DIR._finalizer.detach()
    os.environ.clear()
    os.environ.update(request["env"])
    if request["unbuffered"]:  # python -u
        sys.stdout.reconfigure(write_through=True)
        sys.stderr.reconfigure(write_through=True)
    if os.environ.get(SHIM_VAR):
        sys.executable = os.environ[SHIM_VAR]
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


def _watch(conn, pid):
    """In the server's process for one command: answers its exit code, or kills it when the
    client goes first (a killed shim)."""
    exited = os.pidfd_open(pid)
    while exited not in select.select([conn.sock, exited], [], [])[0]:
        try:
            gone = not conn.sock.recv(1)
        except ConnectionResetError:
            gone = True
        if gone:  # the client is gone: so is the command
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
    _, status = os.waitpid(pid, 0)
    try:
        conn.send({"returncode": os.waitstatus_to_exitcode(status)})
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client went as the command ended


class Server:
    def __init__(self, path, sys_path):
        self.path, self.key, self.sys_path = path, import_time(os.environ), sys_path
        self.others = {}  # json of an import-time environment -> (socket, Popen)
        self.forked, self.pid = collections.Counter(), os.getpid()  # per client

    def start_other(self, env):
        """A server started now with environment ``env`` (of another import-time environment);
        ``(its socket, its process)``."""
        path = os.path.join(os.path.dirname(self.path), f"{len(self.others) + 1}.sock")
        return path, start_server(path, env=env)

    def handle(self, conn, listener):
        data, fds, _, _ = socket.recv_fds(conn.sock, 1 << 20, 3)
        conn.pending = data
        try:
            self.answer(conn, fds, listener)
        finally:
            # the server's copies (the command's process has its own); not in a forked command,
            # whose exit unwinds through here: those numbers are its own files by then (a closed
            # gloo epoll descriptor aborted torchrun's ranks)
            if os.getpid() == self.pid:
                for fd in fds:
                    os.close(fd)

    def answer(self, conn, fds, listener):
        request = conn.reply()
        if "server_for" in request:
            env = request["server_for"]  # started with all of it, as a new interpreter
            key = import_time(env)
            if key == self.key:
                conn.send({"socket": self.path})
                return
            key = json.dumps(key, sort_keys=True)
            if key not in self.others:
                self.others[key] = self.start_other(env)
            conn.send({"socket": self.others[key][0]})
        elif "counts" in request:
            counts = {self.path: self.forked[request["counts"]]}
            for path, _ in self.others.values():
                other = Connection.to(path)
                other.send({"counts": request["counts"]})
                counts.update(other.reply())
                other.close()
            conn.send(counts)
        else:
            self.forked[request["run"]["env"].get(CLIENT_VAR, "")] += 1
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # waits for the command
                listener.close()
                for _, proc in self.others.values():  # their end of the session is ours
                    proc.stdin.close()
                command = os.fork()
                if command == 0:
                    _become(request["run"], fds, [conn.sock.detach()], self.sys_path)
                for fd in fds:
                    os.close(fd)
                try:
                    conn.send({"pid": command})
                except (BrokenPipeError, ConnectionResetError):  # the client was killed
                    os.kill(command, signal.SIGKILL)
                    os.waitpid(command, 0)
                    os._exit(0)
                _watch(conn, command)
                os._exit(0)

    def serve(self, ready_fd):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(64)
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
        running = True
        while running:
            ready = select.select([listener, sys.stdin], [], [], 1.0)[0]
            if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1024):
                running = False  # the session ended
            if listener in ready:
                sock, _ = listener.accept()
                try:
                    self.handle(Connection(sock), listener)
                except ConnectionError:  # reset, broken pipe, or closed before its request
                    pass  # a client killed while asking (torchrun ending its ranks): serve on
                sock.close()
            while True:  # reap the finished commands' processes
                try:
                    if os.waitpid(-1, os.WNOHANG)[0] == 0:
                        break
                except ChildProcessError:
                    break
        listener.close()
        os.unlink(self.path)
        for _, proc in self.others.values():
            proc.stdin.close()
            proc.wait()
        while True:  # every command's process, so that their CPU time counts in this one's
            try:
                os.wait()
            except ChildProcessError:
                break


def main():
    import importlib
    import threading

    path, ready_fd = sys.argv[1], int(sys.argv[2])
    sys_path = list(sys.path)
    for name in PRELOAD:
        importlib.import_module(name)
    assert threading.active_count() == 1, threading.enumerate()
    Server(path, sys_path).serve(ready_fd)


if __name__ == "__main__":
    main()

"""A stand-in for the Hugging Face Hub on 127.0.0.1, for tests (no network in CI).

Implements just what ``huggingface_hub`` (2.4) needs for ``create_repo``, ``create_branch``,
``upload_folder`` (``preupload`` answers ``regular`` for every file, so the content comes inline
in the NDJSON commit call, base64) and ``hf_hub_download`` (``HEAD``/``GET .../resolve/<rev>/<file>``
with ``ETag``, ``X-Repo-Commit`` and ``Content-Length``). Writes need ``Authorization: Bearer
<token>``, and so do reads of a repo created private (401 otherwise, as the Hub answers);
``fail_commits = n`` answers the next ``n`` commit calls with 500 (a failure mid-upload, after
the repo and the pre-upload). Every request's headers (lower-case names) are kept in
``requests`` so a test can check what was sent.

    with HubServer(token="hf_test") as hub:   # hub.url -> HF_ENDPOINT
        ...
"""

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]


def listing(folder):
    """name -> sha256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


class HubServer:
    """``repos[repo_id][revision][path] = bytes``; started on a free port by ``with``."""

    def __init__(self, token):
        self.token = token
        self.repos = {}
        self.private = set()  # repo ids created with private=True
        self.fail_commits = 0
        self.requests = []  # (method, path, headers)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def push(self, run_folder, out, repo, hf_home, *extra):
        """``pretrained_interfaces/export.py run_folder --out out --push repo [extra]`` with this
        server as ``HF_ENDPOINT`` and its token in ``HF_TOKEN``, as a user pushes; asserts it
        succeeds and that the files the server got are those of ``out``; returns the process."""
        env = {**os.environ, "HF_ENDPOINT": self.url, "HF_TOKEN": self.token, "HF_HOME": hf_home}
        cmd = ["pretrained_interfaces/export.py", str(run_folder), "--out", str(out)]
        push = subprocess.run(
            [sys.executable, *cmd, "--push", repo, *extra],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert push.returncode == 0, push.stderr[-3000:]
        assert f"{self.url}/{repo}/commit/" in push.stdout
        revision = extra[extra.index("--revision") + 1] if "--revision" in extra else "main"
        files = self.repos[repo][revision]
        assert {k: hashlib.sha256(v).hexdigest() for k, v in files.items()} == listing(out)
        return push

    def load(self, code, hf_home, *args, token=False, check=True):
        """Runs ``python -c code *args`` from the repository root as a user who loads a model by
        its Hub id: this server as ``HF_ENDPOINT``, an empty ``HF_HOME``, no token (or this
        server's in ``HF_TOKEN`` with ``token=True``); asserts it succeeds unless
        ``check=False``; returns the process."""
        env = {**os.environ, "HF_ENDPOINT": self.url, "HF_HOME": hf_home}
        env.pop("HF_TOKEN", None)
        if token:
            env["HF_TOKEN"] = self.token
        proc = subprocess.run(
            [sys.executable, "-c", code, *map(str, args)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if check:
            assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def reply(self, status, body=b"", headers=None):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def header_dict(self):
                return {k.lower(): v for k, v in self.headers.items()}

            def authorised(self):
                if self.headers.get("Authorization") == f"Bearer {hub.token}":
                    return True
                self.reply(401, {"error": "Invalid credentials"}, {"X-Error-Code": "Unauthorized"})
                return False

            def body(self):
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_POST(self):
                hub.requests.append(("POST", self.path, self.header_dict()))
                if not self.authorised():
                    return
                path = unquote(urlparse(self.path).path)
                data = self.body()
                if path == "/api/repos/create":
                    req = json.loads(data)
                    repo = f"{req.get('organization') or 'user'}/{req['name']}"
                    hub.repos.setdefault(repo, {"main": {}})
                    if req.get("private") or req.get("visibility") == "private":
                        hub.private.add(repo)
                    return self.reply(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":  # the README metadata: accepted as it is
                    return self.reply(200, {"errors": [], "warnings": []})
                parts = path.split("/")  # /api/models/<user>/<name>/<action>/<rev>
                if len(parts) < 7:
                    return self.reply(404, {"error": f"not implemented: {path}"})
                repo, action, rev = "/".join(parts[3:5]), parts[5], "/".join(parts[6:])
                if repo not in hub.repos:
                    return self.reply(404, {"error": "Repository not found"})
                revs = hub.repos[repo]
                if action == "branch":
                    revs.setdefault(rev, dict(revs["main"]))
                    return self.reply(200, {})
                if action == "preupload":
                    files = json.loads(data)["files"]
                    modes = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in files
                    ]
                    return self.reply(200, {"files": modes})
                if action == "commit":
                    if hub.fail_commits > 0:
                        hub.fail_commits -= 1
                        return self.reply(500, {"error": "Internal Error (stand-in: failed)"})
                    if rev not in revs:
                        return self.reply(
                            404,
                            {"error": "Revision not found"},
                            {"X-Error-Code": "RevisionNotFound"},
                        )
                    for line in data.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            value = item["value"]
                            revs[rev][value["path"]] = base64.b64decode(value["content"])
                    oid = hashlib.sha1(json.dumps(sorted(revs[rev])).encode()).hexdigest()
                    return self.reply(
                        200,
                        {
                            "commitUrl": f"{hub.url}/{repo}/commit/{oid}",
                            "commitOid": oid,
                            "pullRequestUrl": None,
                        },
                    )
                return self.reply(404, {"error": f"not implemented: {path}"})

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                hub.requests.append((self.command, self.path, self.header_dict()))
                parts = unquote(urlparse(self.path).path).split("/")  # /<u>/<n>/resolve/<rev>/<f>
                if len(parts) < 6 or parts[3] != "resolve":
                    return self.reply(404, {"error": "not implemented"})
                repo, rev, name = "/".join(parts[1:3]), parts[4], "/".join(parts[5:])
                if repo in hub.private and not self.authorised():
                    return
                files = hub.repos.get(repo, {}).get(rev)
                if files is None:
                    return self.reply(
                        404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                    )
                if name not in files:
                    return self.reply(
                        404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
                    )
                content = files[name]
                commit = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()
                etag = hashlib.sha256(content).hexdigest()
                self.reply(
                    200,
                    content,
                    {
                        "ETag": f'"{etag}"',
                        "X-Repo-Commit": commit,
                        "Content-Type": "application/octet-stream",
                    },
                )

        return Handler


class SilentServer:
    """A server on 127.0.0.1 that accepts every connection and never answers (what a hung Hub or
    proxy looks like to a client); ``url`` for ``HF_ENDPOINT``. ``accepted`` counts connections."""

    def __init__(self):
        import socket

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held = []  # open connections, never answered
        self.stop = threading.Event()

    @property
    def accepted(self):
        return len(self.held)

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.held.append(conn)

    def __enter__(self):
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for conn in self.held:
            conn.close()
        self.sock.close()

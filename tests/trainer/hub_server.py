"""A local stand-in for the Hugging Face Hub's file API, on the standard library's http.server.

The real hub is unreachable from the test machines, so `huggingface_hub` (pointed here by its
``endpoint`` / ``HF_ENDPOINT``) talks to this server instead: the same routes and headers the client
uses, serving repositories from local folders. It answers

- ``GET /api/models/<org>/<name>/revision/<revision>``: the commit a branch or tag points at
  (``repo_info``, which ``snapshot_download`` calls first);
- ``GET /api/models/<org>/<name>/tree/<commit>?recursive=true``: the file listing;
- ``HEAD`` / ``GET /<org>/<name>/resolve/<revision>/<path>``: a file, with ``X-Repo-Commit``,
  ``ETag`` and ``Content-Length``;

and the hub's error codes (``X-Error-Code: RepoNotFound / RevisionNotFound / EntryNotFound``), which
the client turns into its typed errors. Every request is recorded (method, path, Authorization
header) so a test can see exactly which files were transferred.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Request:
    """One request the server answered."""

    method: str
    path: str
    authorization: str | None


@dataclass
class Hub:
    """Repositories by id, each {revision name: folder}; commits are derived from (repo, revision)."""

    repos: dict[str, dict[str, Path]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def add(self, repo: str, folder: Path, revision: str = "main") -> str:
        """Serve `folder` as `repo` at `revision`; returns its commit hash."""
        self.repos.setdefault(repo, {})[revision] = folder
        return self.commit(repo, revision)

    @staticmethod
    def commit(repo: str, revision: str) -> str:
        return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()

    def folder(self, repo: str, revision: str) -> Path | None:
        """The folder of a revision name or commit hash."""
        for name, folder in self.repos.get(repo, {}).items():
            if revision in (name, self.commit(repo, name)):
                return folder
        return None

    def downloads(self) -> list[str]:
        """The repository paths of the files sent (GET .../resolve/...), in order."""
        return [r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in self.requests
                if r.method == "GET" and "/resolve/" in r.path]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


class HubHandler(BaseHTTPRequestHandler):
    """Answers one request from `hub` (set on a subclass per server)."""

    hub: Hub

    def log_message(self, *args) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _error(self, code: str, status: int = 404) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, data: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(200)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _answer(self, body: bool) -> None:
        hub = self.hub
        path = urlsplit(self.path).path
        hub.requests.append(Request(self.command, unquote(path), self.headers.get("Authorization")))
        parts = path.strip("/").split("/")
        api = parts[:2] == ["api", "models"]
        repo = "/".join(parts[2:4] if api else parts[:2])
        route = "".join(parts[4:5] if api else parts[2:3])  # revision / tree / resolve
        tail = parts[5:] if api else parts[3:]
        revision, rest = (unquote(tail[0]), tail[1:]) if tail else ("", [])
        if repo not in hub.repos:
            return self._error("RepoNotFound", 401)
        folder = hub.folder(repo, revision)
        if folder is None:
            return self._error("RevisionNotFound")
        commit = hub.commit(repo, next(n for n, f in hub.repos[repo].items() if f == folder))
        if api:
            return self._send(json.dumps(_api_answer(route, repo, commit, folder)).encode(),
                              {"Content-Type": "application/json"}, body)
        file = folder / unquote("/".join(rest))
        if route != "resolve" or not rest or not file.is_file():
            return self._error("EntryNotFound")
        data = file.read_bytes()
        return self._send(data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, body)


def _api_answer(route: str, repo: str, commit: str, folder: Path) -> object:
    """The JSON of the repo_info (revision) and list_repo_tree (tree) routes."""
    files = _files(folder)
    if route == "revision":
        return {"id": repo, "sha": commit, "siblings": [{"rfilename": f} for f in files]}
    return [{"type": "file", "path": f, "size": (folder / f).stat().st_size,
             "oid": hashlib.sha1((folder / f).read_bytes()).hexdigest()} for f in files]


@contextmanager
def serve_hub() -> Iterator[Hub]:
    """A running local hub on a free port; stopped when the block ends."""
    hub = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (HubHandler,), {"hub": hub}))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

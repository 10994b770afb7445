"""Dataset folders uploaded from the New job page, checked and sent by `lora-train upload` itself.

The browser streams each file of the chosen folder to this (local) server, one request per file
(``PUT /upload/<session>/files/<path>``), into a session folder; a file already received with the
same size is skipped on a retry (``GET /upload/<session>`` lists them), so an interrupted upload
resumes. ``check`` runs ``lora-train upload --dry-run`` on the folder and returns its report (the
dataset report, the steps) or its error; ``send`` runs it for real with the user's storage
credentials, which uploads only what changed (its own resume) and only after its checks pass, so a
bad folder (a non-image, an empty folder) shows the CLI's own message and leaves nothing behind.

The plugin never imports the trainer (import-linter), whose dataset checks these are: it runs the
trainer's command as a program, installed with the plugin by the ``cli`` extra.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..objects import StorageOptions

SESSION = re.compile(r"[0-9a-f]{8,64}")
"""A session id as the page makes it (random hex): also a safe folder name."""
UPLOAD_SECONDS = 3600
"""The longest a check or upload runs."""


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Uploads:
    """The upload routes over a scratch folder, acting with `options` (the user's storage keys).

    Args:
        root: Where session folders live (removed when their upload is sent).
        options: The storage endpoint and credentials `lora-train upload` gets.
    """

    def __init__(self, root: Path, options: StorageOptions):
        self.root = root
        self.options = options

    def routes(self) -> list[Route]:
        return [Route("/upload/{session}", self.received),
                Route("/upload/{session}/files/{path:path}", self.receive, methods=["PUT"]),
                Route("/upload/{session}/{step}", self.run, methods=["POST"])]

    def _folder(self, session: str) -> Path | None:
        return self.root / session if SESSION.fullmatch(session) else None

    def received(self, request: Request) -> Response:
        """The files of a session already here, with their sizes (what a resumed upload skips)."""
        folder = self._folder(request.path_params["session"])
        if folder is None:
            return _error("upload session: not a session id")
        files = {p.relative_to(folder).as_posix(): p.stat().st_size
                 for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}
        return JSONResponse({"files": files})

    async def receive(self, request: Request) -> Response:
        """One file of the folder, streamed to disk (never held whole in memory)."""
        folder = self._folder(request.path_params["session"])
        rel = PurePosixPath(request.path_params["path"])
        if folder is None or not rel.parts or rel.is_absolute() or ".." in rel.parts:
            return _error(f"upload: {rel} is not a file path inside the folder")
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        with part.open("wb") as out:
            async for chunk in request.stream():
                out.write(chunk)
        part.replace(target)
        return JSONResponse({"path": rel.as_posix(), "size": target.stat().st_size})

    async def run(self, request: Request) -> Response:
        """POST check or send {uri, family, folder}: ``lora-train upload`` on the session's folder; its
        output names the folder as ``folder`` (the name the user chose) rather than the session's path."""
        folder, step = self._folder(request.path_params["session"]), request.path_params["step"]
        if step not in ("check", "send"):
            return _error(f"no upload step {step!r} (check, send)", 404)
        try:
            body = await request.json()
        except ValueError:
            return _error("the request body is not JSON")
        uri = str(body.get("uri") or "").strip() if isinstance(body, dict) else ""
        if not uri:
            return _error("dataset.uri: give the s3:// prefix to upload the folder to")
        if folder is None:
            return _error("upload session: not a session id")
        folder.mkdir(parents=True, exist_ok=True)  # an empty folder is the CLI's to refuse
        argv = [sys.executable, "-m", "lora_trainer.cli", "upload", str(folder), uri]
        if body.get("family"):
            argv += ["--family", str(body["family"])]
        if step == "check":
            argv.append("--dry-run")
        shown = str(body.get("folder") or "").strip() or "the folder"
        done = await asyncio.to_thread(subprocess.run, argv, env=self._env(), capture_output=True, text=True,
                                       timeout=UPLOAD_SECONDS)
        report = done.stdout.replace(str(folder), shown)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            message = (lines[-1] if lines else f"lora-train upload exited with {done.returncode}")
            return JSONResponse({"error": message.replace(str(folder), shown), "report": report},
                                status_code=400)
        if step == "send":
            shutil.rmtree(folder, ignore_errors=True)
        return JSONResponse({"report": report, "uri": uri})

    def _env(self) -> dict[str, str]:
        o, env = self.options, dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        for key, value in (("S3_ENDPOINT", o.endpoint), ("AWS_ACCESS_KEY_ID", o.access_key),
                           ("AWS_SECRET_ACCESS_KEY", o.secret_key)):
            if value:
                env[key] = value
        env["S3_SECURE"] = "true" if o.secure else "false"
        return env

"""``lora-train ui --storage DIR``: the dashboard's pages over local-mode runs.

A local run writes what a pod writes (`api.contract`): progress.json and manifest.json under
``DIR/<bucket>/<namespace>/<job>/<uid>/``. Each such folder is shown as a job, its status built by
the operator's own `results.apply_reports`, so a local run reads as the same run in a cluster.
The run folders are rescanned every `SCAN_SECONDS` (files have no watch); a change is pushed to
the open pages as the cluster dashboard pushes a watch event. Local mode only shows runs: there is
no operator to create, select, cancel or suspend them.

It lives here, not in the trainer: the trainer may import only the API models and the storage
client (import-linter), and the pages, templates and web stack are the plugin's. `lora-train ui`
runs this module as a program.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...api.contract import MANIFEST_KEY, PROGRESS_KEY
from ...api.status import JobStatus
from ...results import apply_reports, read_reports
from ...status_transitions import rfc3339
from ...storage.local import LocalStore
from ..errors import CliError
from ..objects import Objects, StorageOptions
from . import HOST
from .app import Dashboard
from .live import JobFeed

SCAN_SECONDS = 2.0
"""How often the run folders are read again."""
NAMESPACE = "local"
READ_ONLY = "local mode shows runs only: start one with `lora-train run JOB.yaml --storage DIR`"


def run_folders(root: Path) -> list[Path]:
    """Folders under `root` holding a run's progress.json or manifest.json."""
    found = {p.parent for key in (PROGRESS_KEY, MANIFEST_KEY) for p in root.rglob(key) if p.is_file()}
    return sorted(found)


def run_body(folder: Path) -> dict | None:
    """A job body for one run folder ``.../<namespace>/<job>/<uid>/``; None when it holds no report of
    its own (written by another UID, or unreadable)."""
    uid, name, namespace = folder.name, folder.parent.name, folder.parent.parent.name
    prefix = folder.resolve().as_uri() + "/"
    reports = read_reports(LocalStore(folder, prefix), uid)
    if reports.progress is None and reports.manifest is None:
        return None
    done = reports.progress is not None and reports.progress.phase == "done"
    status = apply_reports(JobStatus(phase="Succeeded" if done else "Running"), reports, prefix)
    created = min(p.stat().st_mtime for p in folder.iterdir())
    return {"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
            "metadata": {"name": name, "namespace": namespace, "uid": uid,
                         "creationTimestamp": rfc3339(datetime.fromtimestamp(created, UTC))},
            "spec": {}, "status": status.to_resource()}


class LocalRuns:
    """The part of `kube.Jobs` the pages read, over the run folders under a storage root."""

    namespace = NAMESPACE

    def __init__(self, root: Path):
        self.root = root

    def list(self) -> list[dict]:
        return [b for b in (run_body(f) for f in run_folders(self.root)) if b is not None]

    def get(self, name: str) -> dict:
        for body in self.list():
            if body["metadata"]["name"] == name:
                return body
        raise CliError(f"ltj/{name} not found in namespace {NAMESPACE} (no run of it under {self.root})")

    def events(self, name: str) -> list[dict]:
        return []

    def templates(self) -> list[dict]:
        return []


class LocalFeed(JobFeed):
    """`JobFeed` over the run folders: a rescan every SCAN_SECONDS instead of a watch."""

    def __init__(self, runs: LocalRuns):
        super().__init__(runs)  # type: ignore[arg-type]
        self.runs = runs
        self._scanner: threading.Thread | None = None
        self._halt = threading.Event()

    def scan(self) -> None:
        """Read the run folders; tell the pages of each job that changed or went."""
        seen = {b["metadata"]["uid"]: b for b in self.runs.list()}
        with self._lock:
            before = dict(self.bodies)
        for uid, body in seen.items():
            if before.get(uid) != body:
                with self._lock:
                    self.bodies[uid] = body
                self._record(body)
                self._notify(body["metadata"]["name"])
        for uid in before.keys() - seen.keys():
            with self._lock:
                gone = self.bodies.pop(uid)
            self._notify(gone["metadata"]["name"])

    def start(self) -> LocalFeed:
        self.scan()

        def loop() -> None:
            while not self._halt.wait(SCAN_SECONDS):
                try:
                    self.scan()
                    self.error = None
                except OSError as err:
                    self.error = f"cannot read {self.runs.root}: {err}"

        self._scanner = threading.Thread(target=loop, name="run-scan", daemon=True)
        self._scanner.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._scanner is not None:
            self._scanner.join(timeout=SCAN_SECONDS + 5)


class LocalDashboard(Dashboard):
    """The dashboard's pages over local runs; the actions and the New job page answer READ_ONLY."""

    def __init__(self, root: Path):
        runs = LocalRuns(root)
        super().__init__(runs, Objects(StorageOptions(None, None, None, False)))  # type: ignore[arg-type]
        self.feed = LocalFeed(runs)

    def _cluster_view(self) -> tuple[list[dict], list[dict] | None]:
        return [], []

    def new_page(self, request: Request) -> Response:
        return self.templates.TemplateResponse(request, "error.html", self._context(error=READ_ONLY),
                                               status_code=400)

    async def create(self, request: Request) -> Response:
        return JSONResponse({"error": READ_ONLY}, status_code=400)

    async def act(self, request: Request) -> Response:
        return JSONResponse({"error": READ_ONLY}, status_code=400)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora-train ui", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, required=True, help="the folder given to `lora-train run --storage`")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LORA_UI_PORT", "8765")))
    args = parser.parse_args(argv)
    if not args.storage.is_dir():
        print(f"--storage: {args.storage} is not a folder", file=sys.stderr)
        return 2
    app = LocalDashboard(args.storage).app()
    print(f"Local runs under {args.storage}: http://{HOST}:{args.port}/  (Ctrl-C stops it)", flush=True)
    uvicorn.Server(uvicorn.Config(app, host=HOST, port=args.port, log_level="warning",
                                  timeout_graceful_shutdown=2)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The dashboard's live view of the namespace's jobs: one Kubernetes watch, fanned out to every
open page, and the training loss each job reported while the dashboard watched it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from ...api.status import JobStatus
from ..errors import CliError
from ..kube import Jobs

WATCH_SECONDS = 20
"""One watch request's length: the thread checks whether to stop at least this often."""
RETRY_SECONDS = 2.0
"""Pause before listing again after a failed list or watch."""
MAX_POINTS = 5000
"""Loss points kept per job (the oldest go first)."""


class JobFeed:
    """The jobs as last seen, kept current by a watch in a thread; each change is told to every
    subscriber (an asyncio queue per open page) as the job's name.

    Args:
        jobs: The namespace's jobs, read with the user's kubeconfig.
    """

    def __init__(self, jobs: Jobs):
        self.jobs = jobs
        self.bodies: dict[str, dict] = {}
        self.losses: dict[str, dict[int, float]] = {}
        """Training loss by step, per job uid, from each progress report seen."""
        self.error: str | None = None
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> JobFeed:
        """List the jobs once (so the first page has them), then watch in a daemon thread."""
        version = self._list()
        self._thread = threading.Thread(target=self._run, args=(version,), name="ltj-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=WATCH_SECONDS + 5)

    def subscribe(self) -> asyncio.Queue:
        """A queue that gets the name of each job that changes, on the calling event loop."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._subscribers.add((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._subscribers = {s for s in self._subscribers if s[1] is not queue}

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.bodies.values())

    def loss_points(self, uid: str) -> list[tuple[int, float]]:
        with self._lock:
            return sorted(self.losses.get(uid, {}).items())

    def _list(self) -> str | None:
        try:
            items, version = self.jobs.list_with_version()
        except CliError as err:
            self.error = str(err)
            return None
        with self._lock:
            self.bodies = {job["metadata"]["name"]: job for job in items}
        for job in items:
            self._record(job)
        self.error = None
        self._notify("")
        return version

    def _run(self, version: str | None) -> None:
        while not self._stop.is_set():
            if version is None:
                self._stop.wait(RETRY_SECONDS)
                version = self._list()
                continue
            try:
                for kind, job in self.jobs.watch(version, WATCH_SECONDS):
                    version = job["metadata"].get("resourceVersion") or version
                    self._apply(kind, job)
                    if self._stop.is_set():
                        return
            except CliError as err:  # an expired version, a dropped connection: list again
                self.error = str(err)
                version = None

    def _apply(self, kind: str, job: dict) -> None:
        name = job["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self.bodies.pop(name, None)
            else:
                self.bodies[name] = job
        if kind != "DELETED":
            self._record(job)
        self._notify(name)

    def _record(self, job: dict) -> None:
        progress = JobStatus.model_validate(job.get("status") or {}).progress
        if progress is not None and progress.loss is not None and progress.step > 0:
            with self._lock:
                points = self.losses.setdefault(job["metadata"]["uid"], {})
                points[progress.step] = progress.loss
                while len(points) > MAX_POINTS:
                    points.pop(next(iter(points)))

    def _notify(self, name: str) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            _call_soon(loop, queue.put_nowait, name)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable, arg: str) -> None:
    """Hand ``arg`` to ``fn`` on ``loop``; a loop that has closed (its page's server stopped) is skipped."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, arg)

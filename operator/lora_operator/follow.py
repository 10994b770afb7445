"""The follow loop: each job that needs periodic attention (running: progress, deadline; finished:
TTL, checkpoint selection) is reconciled, reading its progress, once per progress interval, and a
few unresolved jobs whose first reconcile gave up or met an error are reconciled again. Why one
loop and not a kopf timer per job: see `handlers`.

Each followed job has its own due time, spread over the interval, and a short tick reconciles the
jobs due, a few at a time: 1000 running jobs are about 100 reconciles a second, not 1000 at once
every interval. The burst (each reconcile a progress read from storage and maybe a status write)
queued the event-driven reconciles behind it, Succeeded writes among them, and loaded the API
server in spikes that showed in admission latency (bench/RESULTS.md, session 13)."""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from . import heap
from .api import FINISHED_PHASES, Phase
from .job_index import JobIndex
from .retry_backoff import RetryBackoff
from .selection import selection_pending
from .views import kueue_queue, parse_time, utcnow

log = logging.getLogger(__name__)

UNRESOLVED_GRACE = 60.0
"""Seconds a new job may stay unresolved before the follow loop reconciles it again: a safety
net for a first reconcile that gave up (it kept conflicting, the replica lost its peering)."""
UNQUEUED_PER_TICK = 20
"""Unresolved jobs reconciled again per scan (once an interval) at most, the longest overdue first:
during a submission burst the reconciles lag behind by thousands of jobs, and reconciling all of
them again at once (MinIO checks, status writes) stalled the operator (5000 jobs: 200 s to queue
instead of 93 s, 682 MB). Each retry moves its job behind the others (`RetryBackoff`), so no job
waits behind a fixed set of the oldest."""

FOLLOW_TICK_SECONDS = 0.5
"""How often the loop reconciles the jobs that came due (at most: a quarter of a shorter interval)."""
FOLLOW_WORKERS = 2
"""Follow reconciles at once, and the controller's follow threads they run on: each is mostly a
storage read and a status write. More at once would only wait for a thread, holding their jobs' locks."""

Reconcile = Callable[..., Awaitable[None]]
"""reconcile(uid, progress=bool): one job's reconcile (the controller's)."""


def needs_following(status: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """Jobs that need periodic attention: running ones (progress, deadline), queued ones that Kueue
    admits (their Workload's state) and finished ones
    with a TTL or a checkpoint selection not carried out yet."""
    phase = (status or {}).get("phase")
    if phase == Phase.RUNNING:
        return True
    if phase == Phase.QUEUED and kueue_queue((status or {}).get("resolvedSpec")):
        return True  # Kueue's Workload changes: no watch on Workloads, read each tick
    if phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED):
        return spec.get("ttlSecondsAfterFinished") is not None or (
            phase != Phase.FAILED and selection_pending(spec, status or {}))
    return False


def _body_needs_following(body: Mapping[str, Any]) -> bool:
    return needs_following(body.get("status") or {}, body.get("spec") or {})


class Follower:
    """Runs the follow loop over the job index."""

    def __init__(self, index: JobIndex, retries: RetryBackoff, reconcile: Reconcile,
                 on_error: Callable[[], None] = lambda: None, *, interval: float = 10.0,
                 workers: int = FOLLOW_WORKERS, clock: Callable[[], float] = time.monotonic):
        """`interval`: seconds between two follow reconciles of a job (LORA_PROGRESS_INTERVAL);
        `workers`: follow reconciles at once; `clock`: monotonic seconds (tests pass their own)."""
        self.index = index
        self.retries = retries
        self.reconcile = reconcile
        self.on_error = on_error
        """Called when a reconcile raised (the controller counts it)."""
        self.interval = interval
        self.workers = workers
        self.clock = clock
        self._followed: dict[str, float] = {}
        """uid -> when the job's next follow reconcile is due (on `clock`; inf while queued or in flight)."""
        self._due: list[tuple[float, str]] = []
        """Heap of (due, uid); an entry whose time is not the job's in `_followed` is stale."""
        self._ready: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
        """(uid, when it was due) of the jobs due, for the workers."""
        self._retrying: asyncio.Future | None = None
        """The last scan's reconciles of unresolved jobs, while they run."""

    @property
    def tick_seconds(self) -> float:
        return min(FOLLOW_TICK_SECONDS, self.interval / 4)

    async def run(self) -> None:
        """Until cancelled: a `scan` every interval; every tick the jobs due go to the `workers`."""
        self._followed.clear()  # a run cancelled with jobs queued left them marked in flight
        self._due.clear()
        self._ready = asyncio.Queue()
        workers = [asyncio.create_task(self.work()) for _ in range(self.workers)]
        try:
            next_scan = self.clock() + self.interval
            while True:
                await asyncio.sleep(self.tick_seconds)
                if self.clock() >= next_scan:
                    self.scan()
                    next_scan = self.clock() + self.interval
                self.queue_due()
        finally:
            for task in [*workers, self._retrying]:
                if task is not None:
                    task.cancel()

    def scan(self) -> None:
        """Once per interval, over every job: follows those that newly need it, their first turns
        spread over the next interval; reconciles a few unresolved jobs again (see `retry_due`) once
        the last of those is done; drops what the index and the heaps no longer need."""
        fresh, unresolved = [], []
        now, clock = utcnow(), self.clock()
        retrying = self._retrying is not None and not self._retrying.done()
        for uid in list(self.index.jobs):
            body = self.index.body(uid)
            if body is None:
                continue
            if _body_needs_following(body):
                if uid not in self._followed:
                    fresh.append(uid)
            elif not retrying and (when := self.retry_due(uid, body, now, clock)) is not None:
                unresolved.append((when, uid))
        for n, uid in enumerate(fresh):  # 1000 jobs found running at start: not all due at once
            self._schedule(uid, clock + self.interval * n / len(fresh))
        unqueued = [uid for _, uid in heapq.nsmallest(UNQUEUED_PER_TICK, unresolved)]
        for uid in unqueued:  # each try backs its job off until one resolves it: the others get their turn
            self.retries.tried(uid, clock)
        self.retries.forget(self.index.jobs)
        if unqueued:
            self._retrying = asyncio.ensure_future(self._retry(unqueued))
        self.index.prune()
        heap.trim()  # what the last bursts of events and writes freed goes back to the system

    def queue_due(self) -> None:
        """Hands the followed jobs due now to the workers; a job that no longer needs following
        (finished, deleted) is dropped instead."""
        clock = self.clock()
        while self._due and self._due[0][0] <= clock:
            when, uid = heapq.heappop(self._due)
            if self._followed.get(uid) != when:
                continue
            body = self.index.body(uid)
            if body is None or not _body_needs_following(body):
                del self._followed[uid]
                continue
            self._followed[uid] = math.inf  # queued or in flight: due again once reconciled
            self._ready.put_nowait((uid, when))

    async def work(self) -> None:
        """One worker: reconciles, reading progress, the jobs handed to it, until cancelled. Each is
        due again an interval after it was due; one that waited longer than that, an interval after
        its reconcile began (the loop cannot keep up: it slows down rather than pile up). A reconcile
        that hangs holds its worker only, not the loop."""
        while True:
            uid, due = await self._ready.get()
            began = self.clock()
            try:
                await self.reconcile(uid, progress=True)
            except Exception as err:  # noqa: BLE001 - one job's failure must not stop the others'
                self._failed(uid, err)
            finally:
                self._schedule(uid, due + self.interval if due + self.interval > began else began + self.interval)
                self._ready.task_done()

    async def settled(self) -> None:
        """Waits until the workers reconciled every job handed to them."""
        await self._ready.join()

    async def _retry(self, uids: list[str]) -> None:
        outcomes = await asyncio.gather(*(self.reconcile(uid) for uid in uids), return_exceptions=True)
        for uid, outcome in zip(uids, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._failed(uid, outcome)

    def _schedule(self, uid: str, when: float) -> None:
        self._followed[uid] = when
        heapq.heappush(self._due, (when, uid))

    def _failed(self, uid: str, error: Exception) -> None:
        log.error("following job %s failed: %r", uid, error)
        self.on_error()

    def retry_due(self, uid: str, body: Mapping[str, Any], now: datetime, clock: float) -> float | None:
        """When an unresolved job is due for another reconcile (on the monotonic clock), if it is
        now: after its backoff when a try failed, else once older than the grace (a first
        reconcile that gave up). Finished jobs are done, whether or not they were ever resolved."""
        status = body.get("status") or {}
        if "resolvedSpec" in status or status.get("phase") in FINISHED_PHASES or body["metadata"].get(
                "deletionTimestamp"):
            return None
        due = self.retries.due(uid)
        if due is None:
            created = parse_time(body["metadata"].get("creationTimestamp")) or now
            due = clock - (now - created).total_seconds() + UNRESOLVED_GRACE
        return due if due <= clock else None

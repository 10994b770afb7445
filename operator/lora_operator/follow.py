"""The follow loop: every progress interval, a reconcile (reading progress) of each job that needs
periodic attention (running: progress, deadline; finished: TTL, checkpoint selection), and of a
few unresolved jobs whose first reconcile gave up or met an error. Why one loop and not a kopf
timer per job: see `handlers`."""

from __future__ import annotations

import asyncio
import heapq
import logging
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
"""Unresolved jobs reconciled again per follow-loop tick at most, the longest overdue first:
during a submission burst the reconciles lag behind by thousands of jobs, and reconciling all of
them again at once (MinIO checks, status writes) stalled the operator (5000 jobs: 200 s to queue
instead of 93 s, 682 MB). Each retry moves its job behind the others (`RetryBackoff`), so no job
waits behind a fixed set of the oldest."""

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


class Follower:
    """Runs the follow loop over the job index."""

    def __init__(self, index: JobIndex, retries: RetryBackoff, reconcile: Reconcile,
                 on_error: Callable[[], None] = lambda: None):
        self.index = index
        self.retries = retries
        self.reconcile = reconcile
        self.on_error = on_error
        """Called when a reconcile raised (the controller counts it)."""

    async def run(self, interval: float) -> None:
        """A tick every `interval` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.tick()

    async def tick(self) -> None:
        due, unresolved = [], []
        now, clock = utcnow(), time.monotonic()
        for uid in list(self.index.jobs):
            body = self.index.body(uid)
            if body is None:
                continue
            status = body.get("status") or {}
            if needs_following(status, body.get("spec") or {}):
                due.append(uid)
            elif (when := self.retry_due(uid, body, now, clock)) is not None:
                unresolved.append((when, uid))
        unqueued = [uid for _, uid in heapq.nsmallest(UNQUEUED_PER_TICK, unresolved)]
        for uid in unqueued:  # each try backs its job off until one resolves it: the others get their turn
            self.retries.tried(uid, clock)
        self.retries.forget(self.index.jobs)
        calls = [self.reconcile(uid, progress=True) for uid in due] + [self.reconcile(uid) for uid in unqueued]
        for uid, outcome in zip(due + unqueued, await asyncio.gather(*calls, return_exceptions=True), strict=True):
            if isinstance(outcome, Exception):
                log.error("following job %s failed: %r", uid, outcome)
                self.on_error()
        self.index.prune()
        heap.trim()  # what the last bursts of events and writes freed goes back to the system

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

"""The operator's runtime: the per-job reconcile (serialized per job) and the scheduling loop
(one pass per burst of changes). It reads the kopf indexes, which kopf fills from watch streams
before any handler runs, so a restarted operator starts from the API server's state, not memory."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import heapq
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from . import heap
from .admission import Admitter
from .api import FINISHED_PHASES, Phase
from .config import OperatorConfig
from .k8s import Conflict, Kube, describe_error, transient
from .lifecycle import Emit, Lifecycle
from .metrics import OperatorMetrics
from .positions import PositionWriter
from .retry_backoff import RetryBackoff
from .scheduling import GpuNode
from .selection import selection_pending
from .views import JobView, QueueEntry, parse_time, pod_active, pod_target_node, trainer_pod, utcnow

log = logging.getLogger(__name__)

BURST_SECONDS = 0.02
"""Passes start at least this long apart, so a burst of events makes one pass: a kick that comes
sooner after the last pass waits out the rest of the window. A kick after a quiet spell passes at
once (before, every pass waited the window first: 20 of the 31 ms p50 admission on an idle test
ground, bench/RESULTS.md). Since the claims left the pass (see `admission`), a pass is a few
milliseconds of CPU: 5000 jobs, 0.05 -> 0.02 s took the admission p50 from 0.31-0.33 to 0.26 s
for 30 % more passes and no more operator CPU."""
IDLE_PASS_SECONDS = 5.0
"""A pass runs at least this often (backoffs expiring, missed events)."""
POSITION_ROUND_SECONDS = 0.2
"""The queue-position writer runs at most this often (and after each pass)."""
RECONCILE_WORKERS = 8
"""Reconciles at once (each mostly waits on an API or storage request on a thread)."""
VIEW_CACHE = 512
"""Parsed JobViews kept (most recently used), for the reconciles of jobs that are changing."""


def _values(store: Any) -> list:
    """The values of one kopf index key (a kopf Store) or of a plain list."""
    return list(store) if store is not None else []


UNRESOLVED_GRACE = 60.0
"""Seconds a new job may stay unresolved before the follow loop reconciles it again: a safety
net for a first reconcile that gave up (it kept conflicting, the replica lost its peering)."""
UNQUEUED_PER_TICK = 20
"""Unresolved jobs reconciled again per follow-loop tick at most, the longest overdue first:
during a submission burst the reconciles lag behind by thousands of jobs, and reconciling all of
them again at once (MinIO checks, status writes) stalled the operator (5000 jobs: 200 s to queue
instead of 93 s, 682 MB). Each retry moves its job behind the others (`RetryBackoff`), so no job
waits behind a fixed set of the oldest."""
class Controller:
    """Holds the index views, the per-job locks and the scheduling loop of one operator process."""

    def __init__(self, kube: Kube, config: OperatorConfig, metrics: OperatorMetrics, emit: Emit):
        self.config = config
        self.metrics = metrics
        self.own_writes = kube.own_writes
        self.lifecycle = Lifecycle(kube, config, metrics, emit, node_exists=self.node_exists)
        self.admitter = Admitter(kube, config, metrics, emit, self.lifecycle)
        self.jobs: Mapping[str, Any] = {}
        self.pods: Mapping[str, Any] = {}
        self.nodes: Mapping[str, Any] = {}
        self.positions = PositionWriter(kube, claiming=self.admitter.claiming)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._kicked = asyncio.Event()
        self._passed = asyncio.Event()
        self._entries: dict[str, QueueEntry] = {}
        """uid -> scheduling view of the job's latest body (rebuilt when its resourceVersion moves)."""
        self._views: dict[str, JobView] = {}
        self._seen: dict[str, Any] = {}
        """uid -> the QueuedJob (or None) the last event showed: a change is what needs a pass."""
        metrics.count_jobs_with(self.phase_counts)
        self._nodes_seen: dict[str, Any] = {}
        self._ended: set[tuple[str, str]] = set()
        """(namespace, name) of the trainer pods seen finished and not yet deleted."""
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._waiting: set[str] = set()
        """Jobs in `_queue`, each once."""
        self.passes = 0
        self.retries = RetryBackoff()
        self._handler_context: contextvars.Context | None = None
        self._pass_thread = ThreadPoolExecutor(1, thread_name_prefix="schedule")
        """Passes run on a thread of their own: in the event loop's default executor they would
        wait behind the reconciles of every job and pod event (a few threads, each a round trip
        or more), so a node that freed during a burst of events waited seconds for its pass."""

    def bind(self, jobs: Mapping[str, Any], pods: Mapping[str, Any], nodes: Mapping[str, Any]) -> None:
        """Remembers the kopf indexes (job uid -> body, job uid -> pods, node name -> GpuNode) and the
        context of a handler: kopf's event poster lives in context variables that the scheduling
        loop (started before any handler) would otherwise lack."""
        self.jobs, self.pods, self.nodes = jobs, pods, nodes
        if self._handler_context is None:
            self._handler_context = contextvars.copy_context()

    def node_exists(self, name: str) -> bool:
        return name in self.nodes

    def _body(self, uid: str) -> Mapping[str, Any] | None:
        """The job's latest body: the index's, or the one this process wrote that the watch has not shown yet."""
        bodies = _values(self.jobs.get(uid))
        return self.own_writes.latest(uid, bodies[-1] if bodies else None)

    def job(self, uid: str) -> JobView | None:
        """The job's latest body as a JobView, parsed once per resourceVersion."""
        body = self._body(uid)
        if body is None:
            self._views.pop(uid, None)
            return None
        view = self._views.get(uid)
        if view is None or view.resource_version != body["metadata"].get("resourceVersion"):
            view = JobView.of(body)
            self._views.pop(uid, None)
            self._views[uid] = view
            if len(self._views) > VIEW_CACHE:
                self._views.pop(next(iter(self._views)), None)
        return view

    def entry(self, uid: str) -> QueueEntry | None:
        """The job's scheduling view, rebuilt only when its resourceVersion changed."""
        body = self._body(uid)
        if body is None:
            self._entries.pop(uid, None)
            return None
        entry = self._entries.get(uid)
        if entry is None or entry.resource_version != body["metadata"].get("resourceVersion"):
            entry = self._entries[uid] = QueueEntry.of(body)
        return entry

    def job_event(self, uid: str) -> bool:
        """Records a job event; True when it could let a pass admit more (so a pass is due): a
        job that waits for a node is new or its scheduling view changed (placement, priority, backoff).

        Most job events do not: queuePosition, progress, conditions of running jobs. Nor does a
        job leaving the queue (admitted, suspended, deleted): no node frees, and the others'
        positions follow at the next pass.
        """
        entry = self.entry(uid)
        if entry is None:
            self._seen.pop(uid, None)
            return False
        before = self._seen.get(uid, ...)
        self._seen[uid] = entry.queued
        return entry.queued is not None and (before is ... or before != entry.queued)

    def node_event(self, name: str) -> bool:
        """Records a node event; True when the node's scheduling view changed (not a heartbeat)."""
        now = _values(self.nodes.get(name))
        changed = self._nodes_seen.get(name) != now
        self._nodes_seen[name] = now
        return changed

    def pods_of(self, uid: str) -> dict[str, Mapping[str, Any]]:
        return {p["metadata"]["name"]: p for p in _values(self.pods.get(uid))}

    def all_jobs(self) -> Iterable[JobView]:
        for uid in list(self.jobs):
            view = self.job(uid)
            if view:
                yield view

    def all_entries(self) -> dict[str, QueueEntry]:
        """Every job's scheduling view.

        `job_event` keeps these views: it runs on every job event, after kopf indexed the body.
        Only the jobs with a write of this process ahead of the watch are read again here. A
        pass reads thousands: walking kopf's index (a Python mapping) took two thirds of a
        pass at 5000 jobs. `prune` drops the views of jobs the index no longer has.
        """
        entries = dict(self._entries)
        for uid in self.own_writes.uids():
            entry = self.entry(uid)
            if entry is None:
                entries.pop(uid, None)
            else:
                entries[uid] = entry
        return entries

    def phase_counts(self) -> Counter[str]:
        """Jobs by phase, for `lora_operator_jobs`; read at each scrape, from the metrics thread
        (a list of a dict's values is taken whole, so the event loop's writes cannot break it)."""
        return Counter(entry.phase or "Pending" for entry in list(self._entries.values()))

    def prune(self) -> None:
        """Forgets the scheduling views of jobs that left the index without a DELETED event
        reaching `job_changed`: such a view would hold a place in the queue."""
        for uid in set(self._entries) - set(self.jobs):
            self._entries.pop(uid, None)
            self._seen.pop(uid, None)

    def gpu_nodes(self) -> list[GpuNode]:
        return [n for store in list(self.nodes.values()) for n in _values(store)]

    async def reconcile(self, uid: str, *, progress: bool = False) -> None:
        """Reconciles one job (and optionally reads its progress); retried on conflicts."""
        async with self._locks[uid]:
            for attempt in range(5):
                view = self.job(uid)
                if view is None:
                    self._locks.pop(uid, None)
                    return
                try:
                    await self._on_thread(self.lifecycle.reconcile, view, self.pods_of(uid), utcnow())
                    if progress:
                        await self._on_thread(self.lifecycle.sync_progress, self.job(uid) or view, utcnow())
                    self.retries.passed(uid)
                    return
                except Conflict:
                    await asyncio.sleep(0.1 * (attempt + 1))  # the watch brings the newer object
                except Exception as err:  # noqa: BLE001 - every job ends with a status, whatever went wrong
                    await self._on_thread(self.recover, uid, err)
                    return
            log.info("job %s kept changing; the next event reconciles it", uid)

    def recover(self, uid: str, error: Exception) -> None:
        """After a reconcile raised: an error that may clear up (an API or storage error) leaves
        an unresolved job Pending with the error in its Resolved condition, retried after its
        own backoff; any other error fails the job with the error named (see `Lifecycle.unexpected`)."""
        view = self.job(uid)
        if view is None:
            return
        try:
            if transient(error):
                delay = self.retries.failed(uid, time.monotonic())
                log.warning("%s: %s; next try in %.0f s", view.key, describe_error(error), delay)
                if view.status.resolved_spec is None:
                    self.lifecycle.defer(view, error, utcnow())
            else:
                log.error("%s: unexpected error", view.key, exc_info=error)
                self.lifecycle.unexpected(view, self.pods_of(uid), error, utcnow())
        except Conflict:
            log.info("%s: changed while its error was recorded; the next event reconciles it", view.key)
        except Exception:  # noqa: BLE001 - the status write itself failed; the next try writes it
            log.exception("%s: recording an error in the status failed", view.key)
        self.metrics.count_reconcile_error("reconcile")

    async def _on_thread(self, fn: Callable[..., Any], *args: Any, executor: ThreadPoolExecutor | None = None) -> Any:
        """fn(*args) on a worker thread (of `executor`, else the loop's default), in a handler's
        context: kopf's event poster lives in context variables that the controller's own tasks
        (started before any handler) lack."""
        context = (self._handler_context or contextvars.copy_context()).copy()
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(context.run, fn, *args))

    def enqueue(self, uid: str) -> None:
        """Asks for a reconcile of the job by one of the `reconcile_workers`; a job already
        waiting for one is not added twice (the reconcile reads its latest body when it runs).

        The watch handlers return at once instead of awaiting the reconcile: kopf keeps the whole
        parsed event (a job parses to ~34 KB) until its handler returns, and a burst of thousands
        of new jobs, each waiting for a thread, peaked at over 300 MB of event bodies."""
        if uid not in self._waiting:
            self._waiting.add(uid)
            self._queue.put_nowait(uid)

    async def reconcile_workers(self, count: int = RECONCILE_WORKERS) -> None:
        """Reconciles the queued jobs, `count` at a time, until cancelled."""
        async def work() -> None:
            while True:
                uid = await self._queue.get()
                self._waiting.discard(uid)  # an event from now on queues it again
                try:
                    await self.reconcile(uid)
                except Exception:  # noqa: BLE001 - one job's failure must not stop the others
                    log.exception("reconciling job %s failed", uid)
                    self.metrics.count_reconcile_error("reconcile")

        await asyncio.gather(*(work() for _ in range(count)))

    async def job_gone(self, job: JobView) -> None:
        """The job was deleted: its pods go (see `Lifecycle.gone`) and its node is scheduled again."""
        async with self._locks[job.uid]:
            await self._on_thread(self.lifecycle.gone, job, self.pods_of(job.uid))
        self._locks.pop(job.uid, None)
        self.job_event(job.uid)  # forgets its scheduling view
        self.kick()

    def kick(self) -> None:
        """Asks for a scheduling pass soon (many kicks in a burst make one pass)."""
        self._kicked.set()

    def pod_changed(self, pod: Mapping[str, Any], *, deleted: bool) -> None:
        """A trainer pod event. The watch showed the pod, so it leaves the admitter's overlay.

        A pod frees its node once: on the first event that shows it finished, or on its DELETED
        if it was still active. That event records when the node freed (admission latency starts
        there) and asks for a pass. The events that follow the end of a pod (its deletion's
        MODIFIED, then DELETED) change nothing the scheduler sees. Before, each of them asked
        for a pass, and each moved the node's freed time later.
        """
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        self.admitter.pod_seen(*key)
        if deleted:
            if key in self._ended:
                self._ended.discard(key)
                return
        elif pod_active(pod) or key in self._ended:
            return
        else:
            self._ended.add(key)
        node = pod_target_node(pod)
        if node:
            self.admitter.node_freed[node] = utcnow()
        self.kick()  # the node is free now: schedule before finishing the job's bookkeeping

    async def follow_loop(self) -> None:
        """Every progress interval, reconciles (reading progress) the jobs `needs_following` selects.

        One loop instead of a kopf timer per job: for a resource with timers kopf keeps the
        latest full body (managedFields and all) of every object, whether or not a timer runs
        for it, a second copy of the whole queue beside the slim index; and it evaluates the
        timer's filter on every event of every job.
        """
        while True:
            await asyncio.sleep(self.config.progress_interval)
            due, unresolved = [], []
            now, clock = utcnow(), time.monotonic()
            for uid in list(self.jobs):
                body = self._body(uid)
                if body is None:
                    continue
                status = body.get("status") or {}
                if needs_following(status, body.get("spec") or {}):
                    due.append(uid)
                elif (when := self._retry_due(uid, body, now, clock)) is not None:
                    unresolved.append((when, uid))
            unqueued = [uid for _, uid in heapq.nsmallest(UNQUEUED_PER_TICK, unresolved)]
            for uid in unqueued:  # each try backs its job off until one resolves it: the others get their turn
                self.retries.tried(uid, clock)
            self.retries.forget(self.jobs)
            calls = [self.reconcile(uid, progress=True) for uid in due] + [self.reconcile(uid) for uid in unqueued]
            for uid, outcome in zip(due + unqueued, await asyncio.gather(*calls, return_exceptions=True),
                                    strict=True):
                if isinstance(outcome, Exception):
                    log.error("following job %s failed: %r", uid, outcome)
                    self.metrics.count_reconcile_error("follow")
            self.prune()
            heap.trim()  # what the last bursts of events and writes freed goes back to the system

    def _retry_due(self, uid: str, body: Mapping[str, Any], now: datetime, clock: float) -> float | None:
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

    async def loop(self) -> None:
        """The scheduling loop: a pass after each burst of kicks, and at least every few seconds."""
        loop = asyncio.get_running_loop()
        self.admitter.released = lambda: loop.call_soon_threadsafe(self.kick)  # a claim lost its job: pass again
        writer = asyncio.create_task(self.position_loop())
        try:
            await self._schedule_forever()
        finally:
            writer.cancel()

    async def _schedule_forever(self) -> None:
        loop = asyncio.get_running_loop()
        wakeup = IDLE_PASS_SECONDS
        last_pass = -math.inf  # the first kick passes at once
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kicked.wait(), timeout=wakeup)
            await asyncio.sleep(burst_wait(loop.time() - last_pass))
            self._kicked.clear()
            try:
                plan = await self._on_thread(self.run_pass, executor=self._pass_thread)
            except Exception:  # noqa: BLE001 - one failed pass must not stop scheduling
                log.exception("scheduling pass failed")
                self.metrics.count_reconcile_error("schedule")
                wakeup = 1.0
                continue
            finally:
                last_pass = loop.time()
            self._passed.set()
            wakeup = IDLE_PASS_SECONDS
            if plan.next_wakeup is not None:
                wakeup = min(wakeup, max((plan.next_wakeup - utcnow()).total_seconds(), 0.05))

    async def position_loop(self) -> None:
        """Writes queue positions after passes, within the writer's budget, never blocking a pass."""
        while True:
            await self._passed.wait()
            self._passed.clear()
            try:
                more = await asyncio.to_thread(self.write_positions)
            except Exception:  # noqa: BLE001 - positions are informational; the next round retries
                log.exception("writing queue positions failed")
                more = True
            await asyncio.sleep(max(POSITION_ROUND_SECONDS, self.positions.seconds_until_token()))
            if more:
                self._passed.set()

    def write_positions(self) -> bool:
        """One round of position writes; True when some are still due."""
        entries = self.all_entries()
        self.positions.write(entries)
        return bool(self.positions.due(entries.values()))

    def run_pass(self):
        with self.metrics.pass_seconds.time():
            return self._pass()

    def _pass(self):
        entries = self.all_entries()
        held = self.admitter.held()  # before the pods index (see there)
        pods = held + [trainer_pod(p) for store in list(self.pods.values()) for p in _values(store)]
        queued = [e.queued for e in entries.values() if e.queued is not None]
        plan = self.admitter.run(queued, self.gpu_nodes(), pods, utcnow(), self.job)
        self.positions.wanted = plan.positions
        self.passes += 1
        return plan


def burst_wait(since_last_pass: float) -> float:
    """How long a kick waits before its pass, `since_last_pass` seconds after the last one ended:
    the rest of the burst window, nothing after a quiet spell."""
    return max(0.0, BURST_SECONDS - since_last_pass)


def needs_following(status: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """Jobs that need periodic attention: running ones (progress, deadline) and finished ones
    with a TTL or a checkpoint selection not carried out yet."""
    phase = (status or {}).get("phase")
    if phase == Phase.RUNNING:
        return True
    if phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED):
        return spec.get("ttlSecondsAfterFinished") is not None or (
            phase != Phase.FAILED and selection_pending(spec, status or {}))
    return False


__all__ = ["Controller", "burst_wait", "needs_following"]

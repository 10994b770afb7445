"""The operator's loops over its job index (`job_index`): the reconcile workers (each job
serialized by its lock, fed by `work_queue`), the scheduling loop (one pass per burst of
changes, the first once the index is complete: `startup_listing`) with the queue-position
writer after it, and the follow loop (`follow`). Why these
are the operator's own loops and not kopf handlers: see `handlers`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from .admission import Admitter
from .claims import Claims
from .config import OperatorConfig
from .follow import FOLLOW_WORKERS, UNQUEUED_PER_TICK, Follower, needs_following
from .job_index import JobIndex
from .k8s import Conflict, Kube, describe_error, transient
from .kueue_positions import KueuePositions
from .lifecycle import Emit, Lifecycle
from .metrics import OperatorMetrics
from .positions import PositionWriter
from .retry_backoff import RetryBackoff
from .scheduling import node_caches
from .start_estimates import simulated_starts
from .startup_listing import StartupListing
from .status_writer import StatusWriter
from .views import JobView, QueueEntry, pod_target_node, utcnow
from .work_queue import WorkQueue

log = logging.getLogger(__name__)

BURST_SECONDS = 0.02
"""Passes start at least this long apart, so a burst of events makes one pass: a kick that comes
sooner after the last pass waits out the rest of the window. A kick after a quiet spell passes at
once (before, every pass waited the window first: 20 of the 31 ms p50 admission on an idle test
ground, bench/RESULTS.md). Since the claims left the pass (see `claims`), a pass is a few
milliseconds of CPU: 5000 jobs, 0.05 -> 0.02 s took the admission p50 from 0.31-0.33 to 0.26 s
for 30 % more passes and no more operator CPU."""
IDLE_PASS_SECONDS = 5.0
"""A pass runs at least this often (backoffs expiring, missed events)."""
POSITION_ROUND_SECONDS = 0.2
"""The queue-position writer runs at most this often (and after each pass)."""
ESTIMATE_SECONDS = 30.0
"""The queue is played forward for estimated starts at most this often, in the position writer's
rounds (a simulation runs many scheduling passes; ETAs move slowly)."""
ESTIMATE_PASSES = 200
"""Simulated scheduling passes per estimate at most: jobs past the 200th node freeing get no
estimate (yet)."""
ESTIMATE_WORK = 200_000
"""Simulated passes times queued jobs per estimate at most (`estimate_passes`). An estimate is
Python holding the GIL on the position writer's thread beside the scheduling pass and kopf's loop,
and it reads every job's body; a long queue gets fewer passes, so an estimate's cost stays bounded
(bench/RESULTS.md)."""
RECONCILE_WORKERS = 8
"""Reconciles at once (each mostly waits on an API or storage request on a thread)."""


class Controller:
    """The loops of one operator process over its job index: the reconcile workers, the
    scheduling loop with its position writer, and the follow loop."""

    def __init__(self, kube: Kube, config: OperatorConfig, metrics: OperatorMetrics, emit: Emit,
                 index: JobIndex | None = None, namespace: str | None = None):
        """`namespace`: the one the operator watches (None: all), where `listing` lists the jobs."""
        self.config = config
        self.metrics = metrics
        self.own_writes = kube.own_writes
        self.index = index or JobIndex(kube.own_writes)
        self.listing = StartupListing(lambda: kube.list_job_uids(namespace, config.list_chunk))
        """When the first pass may run: once every job listed at the start of the watch was seen."""
        statuses = StatusWriter(kube)
        self.kueue_positions = KueuePositions(kube)
        self.lifecycle = Lifecycle(kube, config, metrics, emit, node_exists=self.index.node_exists,
                                   statuses=statuses, node_gpus=self.largest_node_gpus,
                                   kueue_positions=self.kueue_positions)
        self.admitter = Admitter(config, metrics, emit, Claims(kube, config, metrics, emit, self.lifecycle,
                                                               statuses=statuses, released=self._kick_from_thread))
        self.positions = PositionWriter(kube, claiming=self.admitter.reservations.claiming, statuses=statuses)
        self.retries = RetryBackoff()
        self.work = WorkQueue(on_error=lambda: metrics.count_reconcile_error("reconcile"))
        self.follower = Follower(self.index, self.retries, lambda uid, **kw: self.reconcile(uid, **kw),
                                 on_error=lambda: metrics.count_reconcile_error("follow"),
                                 interval=config.progress_interval, workers=FOLLOW_WORKERS)
        self._follow_threads = ThreadPoolExecutor(FOLLOW_WORKERS, thread_name_prefix="follow")
        """The follow reconciles' threads: in the default executor the event-driven reconciles
        (a pod ended: the job's Succeeded write) waited behind a thousand progress reads."""
        metrics.count_jobs_with(self.index.phase_counts)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._kicked = asyncio.Event()
        self._passed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        """The event loop the scheduling loop runs in (`_kick_from_thread` wakes it from a thread)."""
        self.passes = 0
        self._estimated_at: float | None = None
        """time.monotonic() of the last estimate of the queue's start times."""
        self._pass_thread = ThreadPoolExecutor(1, thread_name_prefix="schedule")
        """Passes run on a thread of their own: in the event loop's default executor they would
        wait behind the reconciles of every job and pod event (a few threads, each a round trip
        or more), so a node that freed during a burst of events waited seconds for its pass."""

    def bind(self, jobs: Mapping[str, Any], pods: Mapping[str, Any], nodes: Mapping[str, Any]) -> None:
        """Points the index at other mappings (job uid -> bodies, job uid -> pods, node name ->
        GpuNodes): tests build them by hand; the operator passes kopf's at construction."""
        self.index.jobs, self.index.pods, self.index.nodes = jobs, pods, nodes

    def largest_node_gpus(self) -> int:
        """The GPUs of the largest GPU node: what a Kueue Job asks for (Kueue's flavor picks the node)."""
        return max((n.gpus for n in self.index.gpu_nodes()), default=1)

    # The index's answers, for the handlers (one-line shells) and the tests.
    def job(self, uid: str) -> JobView | None:
        return self.index.job(uid)

    def job_event(self, uid: str, body: Mapping[str, Any] | None = None) -> bool:
        """A job's watch event (`body`: its slim body; None in tests that fill the index by hand):
        True when a pass is due (see `JobIndex.job_event`)."""
        if body is not None:
            self.index.saw_job(uid, body)
        self.listing.saw(uid)
        return self.index.job_event(uid)

    def node_event(self, name: str) -> bool:
        return self.index.node_event(name)

    def all_jobs(self) -> Iterable[JobView]:
        return self.index.all_jobs()

    def all_entries(self) -> dict[str, QueueEntry]:
        return self.index.all_entries()

    def prune(self) -> None:
        self.index.prune()

    async def reconcile(self, uid: str, *, progress: bool = False) -> None:
        """Reconciles one job; with `progress` (the follow loop's), reads its progress too, on the
        follow threads.

        A conflict ends it: the job changed after it was read, and the watch event of that change
        queues the job again (its uid left the work queue when this reconcile began), so the next
        reconcile reads the newer object. No sleep-and-retry.
        """
        async with self._locks[uid]:
            view = self.job(uid)
            if view is None:
                self._locks.pop(uid, None)
                return
            threads = self._follow_threads if progress else None
            try:
                await self._on_thread(self.lifecycle.reconcile, view, self.index.pods_of(uid), utcnow(),
                                      executor=threads)
                if progress:
                    await self._on_thread(self.lifecycle.sync_progress, self.job(uid) or view, utcnow(),
                                          executor=threads)
                self.retries.passed(uid)
            except Conflict:
                log.debug("job %s changed while it was reconciled; its watch event queues it again", uid)
            except Exception as err:  # noqa: BLE001 - every job ends with a status, whatever went wrong
                await self._on_thread(self.recover, uid, err)

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
                self.lifecycle.unexpected(view, self.index.pods_of(uid), error, utcnow())
        except Conflict:
            log.info("%s: changed while its error was recorded; the next event reconciles it", view.key)
        except Exception:  # noqa: BLE001 - the status write itself failed; the next try writes it
            log.exception("%s: recording an error in the status failed", view.key)
        self.metrics.count_reconcile_error("reconcile")

    async def _on_thread(self, fn: Callable[..., Any], *args: Any, executor: ThreadPoolExecutor | None = None) -> Any:
        """fn(*args) on a worker thread (of `executor`, else the loop's default): the lifecycle and
        the pass make blocking API and storage calls."""
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))

    def enqueue(self, uid: str) -> None:
        """Asks for a reconcile of the job by one of the `reconcile_workers` (see `WorkQueue`)."""
        self.work.put(uid)

    async def reconcile_workers(self, count: int = RECONCILE_WORKERS) -> None:
        """Reconciles the queued jobs, `count` at a time, until cancelled."""
        await self.work.run(lambda uid: self.reconcile(uid), count)

    async def job_gone(self, job: JobView) -> None:
        """The job was deleted: its pods go (see `Lifecycle.gone`) and its node is scheduled again."""
        self.index.saw_job(job.uid, None)
        async with self._locks[job.uid]:
            await self._on_thread(self.lifecycle.gone, job, self.index.pods_of(job.uid))
        self._locks.pop(job.uid, None)
        self.job_event(job.uid)  # forgets its scheduling view
        self.kick()

    def kick(self) -> None:
        """Asks for a scheduling pass soon (many kicks in a burst make one pass)."""
        self._kicked.set()

    def pod_changed(self, pod: Mapping[str, Any], *, deleted: bool) -> None:
        """A trainer pod event. The watch showed the pod, so it leaves the admitter's overlay.

        A pod frees its node once (`JobIndex.pod_event`): on the first event that shows it ended, or
        on its DELETED if it was still active. That event records when the node freed (admission
        latency starts there) and asks for a pass. The events that may follow (a deletion's MODIFIED
        and DELETED) change nothing the scheduler sees: each asking for a pass, and moving the node's
        freed time later, was a defect.
        """
        meta = pod["metadata"]
        self.admitter.reservations.pod_seen(meta["namespace"], meta["name"])
        if not self.index.pod_event(pod, deleted=deleted):
            return
        node = pod_target_node(pod)
        if node:
            self.admitter.claims.node_freed[node] = utcnow()
        self.kick()  # the node is free now: schedule before finishing the job's bookkeeping

    async def follow_loop(self) -> None:
        """The follow loop (see `follow`), until cancelled."""
        await self.follower.run()

    def _retry_due(self, uid: str, body: Mapping[str, Any], now: datetime, clock: float) -> float | None:
        return self.follower.retry_due(uid, body, now, clock)

    def _kick_from_thread(self) -> None:
        """A claim lost its job and gave its node back (on a claim thread): pass again."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.kick)

    async def loop(self) -> None:
        """The scheduling loop: once the job index is complete (`listing`), a pass after each
        burst of kicks, and at least every few seconds."""
        self._loop = asyncio.get_running_loop()
        await self.listing.wait()
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
        """Writes queue positions after passes, within the writer's budget, never blocking a pass;
        with Kueue enabled, reads Kueue's positions too (`kueue_positions`)."""
        while True:
            await self._passed.wait()
            self._passed.clear()
            try:
                more = await asyncio.to_thread(self.write_positions)
                if self.config.kueue_enabled:  # Kueue's positions: written by the jobs' reconciles
                    for uid in await asyncio.to_thread(self.kueue_positions.refresh, self.index.all_entries()):
                        self.enqueue(uid)
            except Exception:  # noqa: BLE001 - positions are informational; the next round retries
                log.exception("writing queue positions failed")
                more = True
            await asyncio.sleep(max(POSITION_ROUND_SECONDS, self.positions.seconds_until_token()))
            if more:
                self._passed.set()

    def write_positions(self) -> bool:
        """One round of position writes; True when some are still due."""
        if self._estimated_at is None or time.monotonic() - self._estimated_at >= ESTIMATE_SECONDS:
            self.estimate_starts()
        self.positions.write(self.index.all_entries())
        return self.positions.any_due

    def estimate_starts(self) -> None:
        """Plays the queue forward (`start_estimates`) for the position writer to write."""
        self._estimated_at = time.monotonic()
        # the bodies as the index keeps them: `simulated_starts` reads their dicts, no JobView needed
        bodies = [body for uid in list(self.index.jobs) if (body := self.index.body(uid)) is not None]
        queued = [e.uid for e in self.index.all_entries().values() if e.queued is not None]
        starts = simulated_starts(bodies, self.index.gpu_nodes(), utcnow(),
                                  gpu_type_label=self.config.gpu_type_label,
                                  always_tolerated=self.config.trainer_tolerations,
                                  node_limits=self.config.namespace_node_limits,
                                  max_passes=estimate_passes(len(queued)))
        self.positions.estimates = {uid: starts.get(uid) for uid in queued}

    def run_pass(self):
        with self.metrics.pass_seconds.time():
            return self._pass()

    def _pass(self):
        queued = self.index.waiting()
        held = self.admitter.reservations.held()  # before the pods index (see there)
        pods = held + self.index.trainer_pods()
        # a node's cache outlives a pod only on a host path: else no node holds anything for long
        caches = node_caches(e.cached for e in self.index.all_entries().values()) \
            if self.config.model_cache_host_path else None
        plan = self.admitter.run(queued, self.index.gpu_nodes(), pods, utcnow(), self.index.job, caches)
        self.positions.wanted = plan.positions
        self.passes += 1
        return plan


def estimate_passes(queued: int) -> int:
    """Simulated passes for an estimate over `queued` waiting jobs: `ESTIMATE_PASSES`, fewer where
    the queue is so long that they would exceed `ESTIMATE_WORK` (at least one)."""
    return max(1, min(ESTIMATE_PASSES, ESTIMATE_WORK // max(1, queued)))


def burst_wait(since_last_pass: float) -> float:
    """How long a kick waits before its pass, `since_last_pass` seconds after the last one ended:
    the rest of the burst window, nothing after a quiet spell."""
    return max(0.0, BURST_SECONDS - since_last_pass)


__all__ = ["UNQUEUED_PER_TICK", "Controller", "burst_wait", "estimate_passes", "needs_following"]

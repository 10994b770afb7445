"""The operator's runtime: the per-job reconcile (serialized per job) and the scheduling loop
(one pass per burst of changes). It reads the kopf indexes, which kopf fills from watch streams
before any handler runs, so a restarted operator starts from the API server's state, not memory."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from .admission import Admitter
from .api import Phase
from .config import OperatorConfig
from .k8s import Conflict, Kube
from .lifecycle import Emit, Lifecycle
from .metrics import OperatorMetrics
from .scheduling import GpuNode
from .views import JobView, pod_target_node, trainer_pod, utcnow

log = logging.getLogger(__name__)

BURST_SECONDS = 0.05
"""A pass waits this long after the first kick so a burst of events makes one pass."""
IDLE_PASS_SECONDS = 5.0
"""A pass runs at least this often (backoffs expiring, missed events)."""


def _values(store: Any) -> list:
    """The values of one kopf index key (a kopf Store) or of a plain list."""
    return list(store) if store is not None else []


class Controller:
    """Holds the index views, the per-job locks and the scheduling loop of one operator process."""

    def __init__(self, kube: Kube, config: OperatorConfig, metrics: OperatorMetrics, emit: Emit):
        self.config = config
        self.metrics = metrics
        self.lifecycle = Lifecycle(kube, config, metrics, emit, node_exists=self.node_exists)
        self.admitter = Admitter(kube, config, metrics, emit, self.lifecycle)
        self.jobs: Mapping[str, Any] = {}
        self.pods: Mapping[str, Any] = {}
        self.nodes: Mapping[str, Any] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._kicked = asyncio.Event()
        self.passes = 0
        self._handler_context: contextvars.Context | None = None

    def bind(self, jobs: Mapping[str, Any], pods: Mapping[str, Any], nodes: Mapping[str, Any]) -> None:
        """Remembers the kopf indexes (job uid -> body, job uid -> pods, node name -> GpuNode) and the
        context of a handler: kopf's event poster lives in context variables that the scheduling
        loop (started before any handler) would otherwise lack."""
        self.jobs, self.pods, self.nodes = jobs, pods, nodes
        if self._handler_context is None:
            self._handler_context = contextvars.copy_context()

    def node_exists(self, name: str) -> bool:
        return name in self.nodes

    def job(self, uid: str) -> JobView | None:
        bodies = _values(self.jobs.get(uid))
        return JobView.of(bodies[-1]) if bodies else None

    def pods_of(self, uid: str) -> dict[str, Mapping[str, Any]]:
        return {p["metadata"]["name"]: p for p in _values(self.pods.get(uid))}

    def all_jobs(self) -> Iterable[JobView]:
        for uid in list(self.jobs):
            view = self.job(uid)
            if view:
                yield view

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
                    await asyncio.to_thread(self.lifecycle.reconcile, view, self.pods_of(uid), utcnow())
                    if progress:
                        await asyncio.to_thread(self.lifecycle.sync_progress, self.job(uid) or view, utcnow())
                    return
                except Conflict:
                    await asyncio.sleep(0.1 * (attempt + 1))  # the watch brings the newer object
            log.info("job %s kept changing; the next event reconciles it", uid)

    def kick(self) -> None:
        """Asks for a scheduling pass soon (many kicks in a burst make one pass)."""
        self._kicked.set()

    def node_freed(self, pod: Mapping[str, Any]) -> None:
        node = pod_target_node(pod)
        if node:
            self.admitter.node_freed[node] = utcnow()

    async def loop(self) -> None:
        """The scheduling loop: a pass after each burst of kicks, and at least every few seconds."""
        wakeup = IDLE_PASS_SECONDS
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kicked.wait(), timeout=wakeup)
            await asyncio.sleep(BURST_SECONDS)
            self._kicked.clear()
            try:
                context = (self._handler_context or contextvars.copy_context()).copy()
                plan = await asyncio.get_running_loop().run_in_executor(None, context.run, self.run_pass)
            except Exception:  # noqa: BLE001 - one failed pass must not stop scheduling
                log.exception("scheduling pass failed")
                self.metrics.count_reconcile_error("schedule")
                wakeup = 1.0
                continue
            wakeup = IDLE_PASS_SECONDS
            if plan.next_wakeup is not None:
                wakeup = min(wakeup, max((plan.next_wakeup - utcnow()).total_seconds(), 0.05))

    def run_pass(self):
        jobs = list(self.all_jobs())
        pods = [trainer_pod(p) for store in list(self.pods.values()) for p in _values(store)]
        plan = self.admitter.run(jobs, self.gpu_nodes(), pods, utcnow())
        counts: dict[str, int] = defaultdict(int)
        for job in jobs:
            counts[job.status.phase.value] += 1
        self.metrics.observe_jobs(counts)
        self.passes += 1
        return plan


def needs_timer(status: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """Jobs that need periodic attention: running ones (progress, deadline) and finished ones
    with a TTL or a checkpoint selection not carried out yet."""
    phase = (status or {}).get("phase")
    if phase == Phase.RUNNING:
        return True
    if phase in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED):
        output = (status or {}).get("output") or {}
        return spec.get("ttlSecondsAfterFinished") is not None or (
            spec.get("selectedCheckpoint") not in (None, output.get("checkpoint")))
    return False


__all__ = ["Controller", "needs_timer"]

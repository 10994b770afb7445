"""One scheduling pass: snapshot the queue, nodes and trainer pods, ask the pure planner, and carry
out its admissions. The claim on a job is a status patch conditional on the resourceVersion read,
made before its pod is created, so no two passes (or replicas) can start the same attempt."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from . import status_transitions as st
from .api import ConditionType, JobSpec
from .config import OperatorConfig
from .k8s import Conflict, Kube
from .lifecycle import Emit, Lifecycle
from .metrics import OperatorMetrics
from .render import build_trainer_pod
from .scheduling import Admission, GpuNode, Plan, QueuedJob, TrainerPod, resource_toleration, schedule
from .views import JobView, parse_time

log = logging.getLogger(__name__)

ADMISSION_WORKERS = 4
"""Admissions of one pass run side by side: each is a few API round trips (claim, pod, event),
and a pass that fills a hundred free nodes must not take a hundred round trips in a row."""
CLAIM_TRIES = 3
"""Conditional claim writes per admission; a conflict re-reads the job (see `claim`)."""
RECENT_SECONDS = 60.0
"""How long a pod this replica just created counts as holding its node before the watch shows it."""


@dataclass
class Admitter:
    """Runs scheduling passes; remembers only what the watch has not caught up with yet."""

    kube: Kube
    config: OperatorConfig
    metrics: OperatorMetrics
    emit: Emit
    lifecycle: Lifecycle
    recent: dict[str, tuple[tuple[str, str], str, float]] = field(default_factory=dict)
    """node -> ((namespace, pod name), job uid, expiry on the monotonic clock) of pods created by this process."""
    node_freed: dict[str, datetime] = field(default_factory=dict)
    """node -> when its last trainer pod ended (admission latency starts there)."""
    writes: threading.Lock = field(default_factory=threading.Lock)
    """Held while a pass claims jobs; the queue-position writer takes it for each of its writes."""
    _pool: ThreadPoolExecutor | None = None

    def overlay(self, pods: list[TrainerPod]) -> list[TrainerPod]:
        """The watched pods plus the ones just created that the watch does not show yet.

        A pod the watch shows in any phase leaves the overlay: one that ran and ended between
        two passes must free its node then, not when its entry expires.
        """
        now = time.monotonic()
        seen = {(p.namespace, p.name) for p in pods}
        self.recent = {n: v for n, v in self.recent.items() if v[2] > now and v[0] not in seen}
        return pods + [TrainerPod(name=name, node=n, job_uid=uid, active=True, namespace=namespace)
                       for n, ((namespace, name), uid, _) in self.recent.items()]

    def run(self, queued: list[QueuedJob], nodes: list[GpuNode], pods: list[TrainerPod], now: datetime,
            job_of: Callable[[str], JobView | None]) -> Plan:
        """One pass: admit what fits and update the queue/node metrics.

        `queued` are the waiting jobs' scheduling views; `job_of(uid)` gives the full view of
        the few that are admitted. Queue positions are left to `positions.PositionWriter`.
        """
        plan = schedule(queued, nodes, self.overlay(pods), now,
                        gpu_type_label=self.config.gpu_type_label,
                        always_tolerated=(resource_toleration(self.config.gpu_resource),))
        claims = [(job, admission) for admission in plan.admissions
                  if (job := job_of(admission.job_uid)) is not None and job.waiting()]
        # (a job that changed since the snapshot is left to the next pass)
        with self.writes:
            if len(claims) <= 1:
                admitted = sum(self.try_admit(job, admission, now) for job, admission in claims)
            else:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(ADMISSION_WORKERS, thread_name_prefix="admit")
                # Each admission carries the pass's context (kopf's event poster lives in it).
                futures = [self._pool.submit(contextvars.copy_context().run, self.try_admit, job, admission, now)
                           for job, admission in claims]
                admitted = sum(f.result() for f in futures)
        self.metrics.set_queue_length(len(queued) - admitted)
        self.metrics.set_gpu_nodes(busy=len(plan.busy_nodes) + admitted, free=len(plan.free_nodes))
        return plan

    def try_admit(self, job: JobView, admission: Admission, now: datetime) -> bool:
        try:
            self.admit(job, admission, now)
            return True
        except Conflict as err:
            log.info("admission skipped, the job changed: %s", err)
            return False

    def admit(self, job: JobView, admission: Admission, now: datetime) -> None:
        """Claims the job for the node (conditional status patch), then creates its trainer pod."""
        spec = JobSpec.model_validate(job.status.resolved_spec)
        attempt = job.status.attempt + 1
        pod = build_trainer_pod(job_name=job.name, namespace=job.namespace, job_uid=job.uid, spec=spec,
                                node=admission.node, gpus=admission.gpus, attempt=attempt, resume=attempt > 1,
                                config=self.config)
        name = pod["metadata"]["name"]
        job = self.claim(job, admission, pod=name, attempt=attempt, now=now)
        self.recent[admission.node] = ((job.namespace, name), job.uid, time.monotonic() + RECENT_SECONDS)
        self.kube.ensure_service_account(job.namespace, self.config.trainer_service_account)
        self.kube.create_pod(pod)
        self.metrics.observe_admission((now - self.admissible_since(job, admission.node)).total_seconds())
        self.emit(job.body, "Normal", "NodeAssigned",
                  f"attempt {attempt} on node {admission.node} with {admission.gpus} GPU(s), pod {name}")

    def claim(self, job: JobView, admission: Admission, *, pod: str, attempt: int, now: datetime) -> JobView:
        """Writes Admitted, conditional on the resourceVersion read; returns the view it was written on.

        A conflict usually means only kopf's own metadata patch (finalizer, last-handled
        configuration) got in between: the job is read again and, if it still waits for the
        same attempt, claimed again. Giving up would let the lower-ranked jobs of this pass
        take the nodes and pass it over.

        Raises:
            Conflict: the job really changed (admitted elsewhere, suspended, deleted...).
        """
        def write(view: JobView) -> JobView:
            self.lifecycle.write(view, st.admitted(view.status, node=admission.node, gpus=admission.gpus,
                                                   pod=pod, attempt=attempt, now=now))
            return view

        for _ in range(CLAIM_TRIES - 1):
            try:
                return write(job)
            except Conflict:
                body = self.kube.get_job(job.namespace, job.name)
                fresh = JobView.of(body) if body else None
                if (fresh is None or fresh.uid != job.uid or not fresh.waiting()
                        or fresh.status.attempt + 1 != attempt):
                    raise
                job = fresh
        return write(job)

    def admissible_since(self, job: JobView, node: str) -> datetime:
        """When the job could first have taken the node: the later of queued-since and node-freed."""
        queued = next((c.last_transition_time for c in job.status.conditions
                       if c.type == ConditionType.ADMITTED and c.status == "False"), None)
        since = max(filter(None, (parse_time(queued), parse_time(job.status.not_before), self.node_freed.get(node))),
                    default=job.created)
        return since

"""The claims of a pass's admissions and the creation of their trainer pods, on pools of threads.

The claim on a job is a status patch conditional on the resourceVersion read, made before its pod
is created, so no two passes (or replicas) can start the same attempt. A pass hands its
candidates over (`Claims.submit`) and returns: the next pass can run while the claims and then the
pod creations go to the API server. The candidates' nodes stay reserved (`reservations`) meanwhile;
a claim that fails gives its node back (see `settle`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from . import status_transitions as st
from .api import ConditionType, JobSpec, Reason
from .config import OperatorConfig
from .k8s import Conflict, Kube, Refused
from .lifecycle import Emit, Lifecycle
from .metrics import OperatorMetrics
from .render import build_trainer_pod
from .reservations import Reservations
from .scheduling import Admission
from .status_writer import StatusWriter
from .views import JobView, parse_time

log = logging.getLogger(__name__)
T = TypeVar("T")

ADMISSION_WORKERS = 16
"""Claims of one pass run side by side, and so do pod creations: a pass that fills a hundred free
nodes must not take two hundred round trips in a row. (1000 jobs on 100 nodes, bench/RESULTS.md:
admission p50 / p99 0.50 / 1.61 s with 4, 0.35 / 0.91 s with 8; later, the first pod of each of
100 nodes released at once p50 0.86 s with 8, 0.64 s with 16.)"""
CLAIM_TRIES = 3
"""Conditional claim writes per admission; a conflict re-reads the job (see `claim`)."""
SETTLERS = 4
"""Passes whose claims can be in flight at once (each waits on its claims' round trips)."""


def _set(event: threading.Event) -> threading.Event:
    event.set()
    return event


@dataclass(frozen=True)
class Claimed:
    """A job this pass claimed for a node, and the trainer pod to create for it."""

    job: JobView
    """The view the claim was written on."""
    admission: Admission
    attempt: int
    pod: dict[str, Any]


@dataclass
class Claims:
    """Claims the jobs a pass admitted and creates their pods, in the pass's order."""

    kube: Kube
    config: OperatorConfig
    metrics: OperatorMetrics
    emit: Emit
    lifecycle: Lifecycle
    reservations: Reservations = field(default_factory=Reservations)
    """Holds each candidate's node from before its claim until the watch shows its pod."""
    statuses: StatusWriter | None = None
    """Writes the claims. Default: one over `kube`."""
    released: Callable[[], None] = lambda: None
    """Called from a claim thread when a claim failed and gave its node back (the controller asks for a pass)."""
    node_freed: dict[str, datetime] = field(default_factory=dict)
    """node -> when its last trainer pod ended (admission latency starts there)."""
    _settled: threading.Event = field(default_factory=lambda: _set(threading.Event()))
    """Set once every claim of the latest pass is settled: the next pass creates its pods after that."""
    _pool: ThreadPoolExecutor | None = None
    _settlers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(SETTLERS, thread_name_prefix="settle"))
    _starter: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(ADMISSION_WORKERS, thread_name_prefix="start"))

    def __post_init__(self) -> None:
        if self.statuses is None:
            self.statuses = StatusWriter(self.kube)

    def submit(self, candidates: list[tuple[JobView, Admission]], now: datetime) -> None:
        """Reserves the candidates' nodes and hands their claims to the settlers (see `settle`);
        returns at once. Called by one pass at a time, in the passes' order."""
        self.reservations.reserve(candidates)
        before, settled = self._settled, threading.Event()
        self._settled = settled
        self._settlers.submit(self.settle, candidates, now, before, settled)

    def settle(self, candidates: list[tuple[JobView, Admission]], now: datetime,
               before: threading.Event, settled: threading.Event) -> None:
        """Claims the pass's candidates side by side and creates the pod of each claimed one.

        A pod is created once its own claim and those of every better-ranked candidate of the
        pass are settled, and after every claim of the passes before: a lower-ranked job's pod
        never appears while a better-ranked job is still being claimed, yet the head of a pass
        that fills a hundred nodes does not wait for the hundredth claim. A claim that fails
        gives its node back; one that lost to a change of its job also asks for a pass at once
        (an API error waits for the next one, so a persistent error does not spin)."""
        lost = False
        try:
            pending = self._submit_each(self._claim_or_log, candidates, now)
            before.wait()
            for (job, admission), claim in zip(candidates, pending, strict=True):
                outcome = claim.result()
                if isinstance(outcome, Claimed):
                    self._starter.submit(self.start, outcome, now)
                else:
                    self.reservations.release(job, admission.node)
                    lost = lost or outcome is None
        finally:
            settled.set()
        if lost:
            self.released()

    def _submit_each(self, fn: Callable[[Any, datetime], T], items: list, now: datetime) -> list[Future[T]]:
        """fn(item, now) for each item, side by side on the admission pool; their futures in the items' order."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(ADMISSION_WORKERS, thread_name_prefix="admit")
        return [self._pool.submit(fn, item, now) for item in items]

    def _claim_or_log(self, candidate: tuple[JobView, Admission], now: datetime) -> Claimed | None | bool:
        """`try_claim`, with an error logged and counted (False) instead of raised on a pool thread."""
        try:
            return self.try_claim(candidate, now)
        except Exception:  # noqa: BLE001 - in a pool thread nothing else would see it
            log.exception("%s: claiming node %s failed", candidate[0].key, candidate[1].node)
            self.metrics.count_reconcile_error("admission")
            return False

    def try_claim(self, candidate: tuple[JobView, Admission], now: datetime) -> Claimed | None:
        """Claims the job for the node (see `claim`); None when the job changed meanwhile."""
        job, admission = candidate
        spec = JobSpec.model_validate(job.status.resolved_spec)
        attempt = job.status.attempt + 1
        pod = build_trainer_pod(job_name=job.name, namespace=job.namespace, job_uid=job.uid, spec=spec,
                                node=admission.node, gpus=admission.gpus, attempt=attempt, resume=attempt > 1,
                                config=self.config, template_pod=job.status.trainer_pod,
                                progress=job.status.progress, node_labels=admission.labels)
        name = pod["metadata"]["name"]
        try:
            job = self.claim(job, admission, pod=name, attempt=attempt, now=now)
        except Conflict as err:
            log.info("admission skipped, the job changed: %s", err)
            return None
        return Claimed(job, admission, attempt, pod)

    def start(self, claimed: Claimed, now: datetime) -> None:
        """Creates the trainer pod of a claimed job.

        A failure is only logged: the job is Admitted, and once its pod has not appeared for
        `lifecycle.POD_CREATE_GRACE` its attempt counts as lost and it is queued again.
        """
        job, admission, name = claimed.job, claimed.admission, claimed.pod["metadata"]["name"]
        try:
            self.kube.ensure_service_account(job.namespace, self.config.trainer_service_account)
            self.kube.create_pod(claimed.pod)
        except Refused as err:
            return self.refused(claimed, err, now)
        except Exception:  # noqa: BLE001 - in a pool thread nothing else would see it
            log.exception("%s: creating trainer pod %s failed", job.key, name)
            self.metrics.count_reconcile_error("admission")
            return
        self.metrics.observe_admission((now - self.admissible_since(job, admission.node)).total_seconds())
        self.emit(job.body, "Normal", "NodeAssigned",
                  f"attempt {claimed.attempt} on node {admission.node} with {admission.gpus} GPU(s), pod {name}")

    def refused(self, claimed: Claimed, error: Refused, now: datetime) -> None:
        """The API server refused the trainer pod (422/400): a value of the job's spec that the
        Pod API does not take and the CRD's rules did not catch. Sending it again cannot help,
        so the job fails at once with the server's message, and its node is free again now
        (before, the claim held it until the pod's grace ran out, then queued the job again)."""
        job, node = claimed.job, claimed.admission.node
        log.info("%s: %s", job.key, error)
        try:
            for _ in range(CLAIM_TRIES):
                body = self.kube.get_job(job.namespace, job.name)
                fresh = JobView.of(body) if body else None
                if fresh is None or fresh.uid != job.uid or fresh.status.attempt != claimed.attempt:
                    break
                try:
                    self.lifecycle.fail(fresh, Reason.POD_REFUSED, f"{error}; fix the job's spec", now)
                    break
                except Conflict:
                    continue
        finally:
            self.reservations.release(job, node)
            self.released()

    def claim(self, job: JobView, admission: Admission, *, pod: str, attempt: int, now: datetime) -> JobView:
        """Writes Admitted, conditional on the resourceVersion read; returns the view it was written on.

        A conflict usually means only a queue-position write got in between (kopf writes
        nothing on jobs: the operator has no change-detecting handler, see `handlers`):
        the job is read again and, if it still waits for the same attempt, claimed again.
        Giving up would let the lower-ranked jobs of this pass take the nodes and pass it over.

        Raises:
            Conflict: the job really changed (admitted elsewhere, suspended, deleted...).
        """
        def write(view: JobView) -> JobView:
            self.statuses.write(view, st.admitted(view.status, node=admission.node, gpus=admission.gpus,
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

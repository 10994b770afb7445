"""One scheduling pass: snapshot the queue, nodes and trainer pods, ask the pure planner, and carry
out its admissions. The claim on a job is a status patch conditional on the resourceVersion read,
made before its pod is created, so no two passes (or replicas) can start the same attempt.

A pass reserves the nodes it hands out (`Admitter.held` shows them as taken, and their jobs as
started), hands the claims to a pool and returns: the next pass can run while the claims and then
the pod creations go to the API server. A claim that fails gives its node back (see `settle`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
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
from .render import build_trainer_pod, pod_name
from .scheduling import (
    Admission,
    GpuNode,
    Plan,
    QueuedJob,
    TrainerPod,
    WaitingQueue,
    node_limit,
    schedule,
    unmatched_by_placement,
)
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
RECENT_SECONDS = 60.0
"""How long a pod this replica is claiming or just created counts as holding its node before the watch shows it."""
SETTLERS = 4
"""Passes whose claims can be in flight at once (each waits on its claims' round trips)."""
NOTE_WRITERS = 2
"""Threads that write whether any GPU node matches a waiting job (`Admitter._tell_unmatched`).
These notes come by the thousand when every job's match changes at once (all GPU nodes tainted,
then untainted, or the first nodes joining a cluster), and they are only for the user: on a pool
of their own they cannot hold up a pod creation, and two at a time leave the API server to the
claims and pods."""


def describe_placement(job: QueuedJob, gpu_type_label: str) -> str:
    """A job's placement as a user reads it, each part with the field that sets it."""
    parts = []
    if job.gpu_type is not None:
        parts.append(f"spec.placement.gpuType {job.gpu_type!r} (node label {gpu_type_label})")
    if job.node_selector:
        parts.append(f"spec.placement.nodeSelector {dict(job.node_selector)}")
    if job.tolerations:
        parts.append(f"with spec.placement.tolerations of {len(job.tolerations)} taint(s)")
    return ", ".join(parts) or "the job's placement (every GPU node has a taint it does not tolerate)"


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
class Admitter:
    """Runs scheduling passes; remembers only what the watch has not caught up with yet."""

    kube: Kube
    config: OperatorConfig
    metrics: OperatorMetrics
    emit: Emit
    lifecycle: Lifecycle
    statuses: StatusWriter | None = None
    """Writes the claims and the node-match notes. Default: one over `kube`."""
    recent: dict[str, tuple[tuple[str, str], str, float]] = field(default_factory=dict)
    """node -> ((namespace, pod name), job uid, expiry on the monotonic clock) of the pods this
    process is claiming a job for or has created, until the watch shows them."""
    node_freed: dict[str, datetime] = field(default_factory=dict)
    """node -> when its last trainer pod ended (admission latency starts there)."""
    released: Callable[[], None] = lambda: None
    """Called from a claim thread when a claim failed and gave its node back (the controller asks for a pass)."""
    told_unmatched: frozenset[str] = frozenset()
    """Waiting jobs whose status says no GPU node matches them (NoMatchingNode)."""
    told_limited: set[str] = field(default_factory=set)
    """Waiting jobs already told (an Event) that their namespace holds its node limit: told once per wait."""
    _matched_on: tuple[GpuNode, ...] = ()
    """The nodes `_matches_none` was worked out on (the pass's thread only)."""
    _matches_none: dict = field(default_factory=dict)
    """Placement -> whether no node of `_matched_on` could take it."""
    _recent_lock: threading.Lock = field(default_factory=threading.Lock)
    """`recent` changes in the pass's threads and on the event loop (`pod_seen`)."""
    _settled: threading.Event = field(default_factory=lambda: _set(threading.Event()))
    """Set once every claim of the latest pass is settled: the next pass creates its pods after that."""
    _pool: ThreadPoolExecutor | None = None
    _settlers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(SETTLERS, thread_name_prefix="settle"))
    _starter: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(ADMISSION_WORKERS, thread_name_prefix="start"))
    _notes: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(NOTE_WRITERS, thread_name_prefix="note"))

    def __post_init__(self) -> None:
        if self.statuses is None:
            self.statuses = StatusWriter(self.kube)

    def held(self) -> list[TrainerPod]:
        """The pods this process created that the watch has not shown yet; each holds its node.

        Take it before reading the pods index: an entry leaves when the watch shows its pod
        (`pod_seen`), after kopf put the pod in the index, so in this order every such pod is in
        one or the other (the other order could miss a pod that appeared in between).
        """
        now = time.monotonic()
        with self._recent_lock:
            self.recent = {n: v for n, v in self.recent.items() if v[2] > now}
            return [TrainerPod(name=name, node=n, job_uid=uid, active=True, namespace=namespace)
                    for n, ((namespace, name), uid, _) in self.recent.items()]

    def claiming(self, uid: str) -> bool:
        """Whether a pass of this process has reserved a node for the job (its claim may be in flight)."""
        with self._recent_lock:
            return any(job_uid == uid for _, job_uid, _ in self.recent.values())

    def pod_seen(self, namespace: str, name: str) -> None:
        """The watch showed this pod, in any phase: it no longer holds its node through `held`.

        Called on every trainer pod event, not from a pass: a pod that ran and ended while a long
        pass ran (or between two passes) must free its node then, not when its entry expires.
        """
        with self._recent_lock:
            for node, (key, _, _) in list(self.recent.items()):
                if key == (namespace, name):
                    del self.recent[node]

    def run(self, queued: WaitingQueue | Iterable[QueuedJob], nodes: list[GpuNode], pods: list[TrainerPod],
            now: datetime, job_of: Callable[[str], JobView | None],
            caches: Mapping[str, frozenset[str]] | None = None) -> Plan:
        """One pass: admit what fits and update the queue/node metrics.

        `queued` are the waiting jobs' scheduling views (the operator's queue kept between
        passes, or a snapshot); `pods` the trainer pods, `held()` among them (read first, see
        there); `job_of(uid)` gives the full view of the few that are admitted. Queue positions
        are left to `positions.PositionWriter`.
        """
        queue = queued if isinstance(queued, WaitingQueue) else WaitingQueue(queued)
        plan = schedule(queue, nodes, pods, now,
                        gpu_type_label=self.config.gpu_type_label,
                        always_tolerated=self.config.trainer_tolerations,
                        node_limits=self.config.namespace_node_limits, caches=caches)
        self._tell_limited(plan.limited, queue, job_of)
        candidates = [(job, admission) for admission in plan.admissions
                      if (job := job_of(admission.job_uid)) is not None and job.waiting()]
        # (a job that changed since the snapshot is left to the next pass)
        if candidates:
            self._reserve(candidates)
            before, settled = self._settled, threading.Event()
            self._settled = settled
            self._settlers.submit(self.settle, candidates, now, before, settled)
        self._tell_unmatched(queue, nodes, job_of, now)  # after `_reserve`: its claims say it for the jobs admitted
        self.metrics.set_queue_length(len(queue) - len(candidates))
        self.metrics.set_gpu_nodes(busy=len(plan.busy_nodes) + len(candidates), free=len(plan.free_nodes))
        return plan

    def _tell_limited(self, limited: frozenset[str], waiting: WaitingQueue,
                      job_of: Callable[[str], JobView | None]) -> None:
        """An Event on each job that newly waits because its namespace holds its node limit."""
        for uid in limited - self.told_limited:
            if (job := job_of(uid)) is not None:
                limit = node_limit(self.config.namespace_node_limits, job.namespace)
                self.emit(job.body, "Normal", "NamespaceLimit",
                          f"namespace {job.namespace} holds its limit of {limit} GPU node(s) "
                          f"({self.config.env_var('namespace_node_limits')}); the job keeps its place in the queue")
        self.told_limited = {uid for uid in self.told_limited | limited if uid in waiting}

    def _tell_unmatched(self, waiting: WaitingQueue, nodes: list[GpuNode],
                        job_of: Callable[[str], JobView | None], now: datetime) -> None:
        """A waiting job that no GPU node could take (gpuType, nodeSelector, taints) says so:
        Admitted False with reason NoMatchingNode and an Event, once; back to Queued when a node
        that matches joins. It keeps its place and holds up no other job (the planner passes it over).
        Checked once per placement of the waiting jobs, not per job."""
        if tuple(nodes) != self._matched_on:  # a node changed, joined or left: check every placement again
            self._matched_on, self._matches_none = tuple(nodes), {}
        none = unmatched_by_placement(waiting.by_placement(), nodes, gpu_type_label=self.config.gpu_type_label,
                                      always_tolerated=self.config.trainer_tolerations, memo=self._matches_none)
        changed = [(uid, False) for uid in none - self.told_unmatched] + [
            (uid, True) for uid in self.told_unmatched - none if uid in waiting]
        with self._recent_lock:
            self.told_unmatched = none
        for uid, matched in changed:
            self._notes.submit(self._write_match, waiting.get(uid), matched, job_of, now)

    def _write_match(self, queued: QueuedJob, matched: bool, job_of: Callable[[str], JobView | None],
                     now: datetime) -> None:
        """Writes whether any node matches the job (see `_tell_unmatched`); a write that lost to a
        change of the job is left to the next pass. A job being claimed is skipped: its claim
        writes Admitted itself, and a note beside it would only make the claim conflict (if the
        claim is lost, the next pass writes the note)."""
        job = job_of(queued.uid)
        if job is None or not job.waiting():
            return
        if self.claiming(queued.uid):
            self._tell_again(queued.uid)
            return
        if matched:
            message = "a GPU node that matches the job's placement joined; waiting for it to be free"
        else:
            message = f"no GPU node matches {describe_placement(queued, self.config.gpu_type_label)}; " \
                      "the job keeps its place and waits for one to join"
        new = st.waiting_for_node(job.status, matched=matched, message=message, now=now)
        if new == job.status:
            return
        try:
            self.statuses.write(job, new)
        except Exception as err:  # noqa: BLE001 - in a pool thread; the next pass tries again
            log.info("%s: recording whether a node matches failed: %s", job.key, err)
            self._tell_again(queued.uid)
            return
        if not matched:
            self.emit(job.body, "Warning", Reason.NO_MATCHING_NODE, message)

    def _tell_again(self, uid: str) -> None:
        """Undoes what `_tell_unmatched` recorded as told for `uid`: the next pass compares again
        and writes the note if the job still waits."""
        with self._recent_lock:
            self.told_unmatched = self.told_unmatched ^ {uid}

    def _reserve(self, candidates: list[tuple[JobView, Admission]]) -> None:
        """Marks each candidate's node as held by the pod its claim is for, before the claim is sent."""
        expiry = time.monotonic() + RECENT_SECONDS
        with self._recent_lock:
            for job, admission in candidates:
                key = (job.namespace, pod_name(job.name, job.status.attempt + 1))
                self.recent[admission.node] = (key, job.uid, expiry)

    def _release(self, job: JobView, node: str) -> None:
        with self._recent_lock:
            if node in self.recent and self.recent[node][1] == job.uid:
                del self.recent[node]

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
                    self._release(job, admission.node)
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
            self._release(job, node)
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

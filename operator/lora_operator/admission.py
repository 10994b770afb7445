"""One scheduling pass: snapshot the queue, nodes and trainer pods, ask the pure planner, hand its
admissions to the claims (`claims`), and tell the waiting jobs why they wait when that changed:
their namespace holds its node limit (an Event), or no GPU node matches them (NoMatchingNode).

A pass reserves the nodes it hands out (`reservations`: held pods show them as taken, and their
jobs as started) and returns: the next pass can run while the claims and then the pod creations
go to the API server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from . import status_transitions as st
from .api import Reason
from .claims import Claims
from .config import OperatorConfig
from .lifecycle import Emit
from .metrics import OperatorMetrics
from .reservations import Reservations
from .scheduling import (
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
from .views import JobView

log = logging.getLogger(__name__)

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


@dataclass
class Admitter:
    """Runs scheduling passes and tells waiting jobs why they wait; the claims it hands to `claims`."""

    config: OperatorConfig
    metrics: OperatorMetrics
    emit: Emit
    claims: Claims
    """Claims the pass's admissions and creates their pods; its `reservations` hold their nodes meanwhile."""
    statuses: StatusWriter | None = None
    """Writes the node-match notes. Default: the claims' writer."""
    told_unmatched: frozenset[str] = frozenset()
    """Waiting jobs whose status says no GPU node matches them (NoMatchingNode)."""
    told_limited: set[str] = field(default_factory=set)
    """Waiting jobs already told (an Event) that their namespace holds its node limit: told once per wait."""
    _matched_on: tuple[GpuNode, ...] = ()
    """The nodes `_matches_none` was worked out on (the pass's thread only)."""
    _matches_none: dict = field(default_factory=dict)
    """Placement -> whether no node of `_matched_on` could take it."""
    _told_lock: threading.Lock = field(default_factory=threading.Lock)
    """`told_unmatched` changes on the pass's thread and on the note writers' (`_tell_again`)."""
    _notes: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(NOTE_WRITERS, thread_name_prefix="note"))

    def __post_init__(self) -> None:
        if self.statuses is None:
            self.statuses = self.claims.statuses

    @property
    def reservations(self) -> Reservations:
        """The nodes this process handed out that the watch does not show as taken yet."""
        return self.claims.reservations

    def run(self, queued: WaitingQueue | Iterable[QueuedJob], nodes: list[GpuNode], pods: list[TrainerPod],
            now: datetime, job_of: Callable[[str], JobView | None],
            caches: Mapping[str, frozenset[str]] | None = None) -> Plan:
        """One pass: admit what fits and update the queue/node metrics.

        `queued` are the waiting jobs' scheduling views (the operator's queue kept between
        passes, or a snapshot); `pods` the trainer pods, `reservations.held()` among them (read
        first, see there); `job_of(uid)` gives the full view of the few that are admitted. Queue
        positions are left to `positions.PositionWriter`.
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
            self.claims.submit(candidates, now)
        self._tell_unmatched(queue, nodes, job_of, now)  # after `submit` reserved: the claims say it for theirs
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
        with self._told_lock:
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
        if self.reservations.claiming(queued.uid):
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
        with self._told_lock:
            self.told_unmatched = self.told_unmatched ^ {uid}


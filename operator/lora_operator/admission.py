"""One scheduling pass: snapshot the queue, nodes and trainer pods, ask the pure planner, and carry
out its admissions. The claim on a job is a status patch conditional on the resourceVersion read,
made before its pod is created, so no two passes (or replicas) can start the same attempt."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from . import status_transitions as st
from .api import ConditionType, JobSpec
from .config import OperatorConfig
from .k8s import Conflict, Kube
from .lifecycle import Emit, Lifecycle
from .metrics import OperatorMetrics
from .render import build_trainer_pod
from .scheduling import Admission, GpuNode, Plan, TrainerPod, resource_toleration, schedule
from .views import JobView, parse_time

log = logging.getLogger(__name__)

RECENT_SECONDS = 60.0
"""How long a pod this replica just created counts as holding its node before the watch shows it."""
POSITION_WRITES_PER_PASS = 200
"""queuePosition patches per pass, head of the queue first: one admission must not cost 5000 writes."""


@dataclass
class Admitter:
    """Runs scheduling passes; remembers only what the watch has not caught up with yet."""

    kube: Kube
    config: OperatorConfig
    metrics: OperatorMetrics
    emit: Emit
    lifecycle: Lifecycle
    recent: dict[str, tuple[str, float]] = field(default_factory=dict)
    """node -> (job uid, expiry on the monotonic clock) of pods created by this process."""
    node_freed: dict[str, datetime] = field(default_factory=dict)
    """node -> when its last trainer pod ended (admission latency starts there)."""

    def overlay(self, pods: list[TrainerPod]) -> list[TrainerPod]:
        """The watched pods plus the ones just created that the watch does not show yet."""
        now = time.monotonic()
        seen = {(p.job_uid, p.node) for p in pods if p.active}
        self.recent = {n: v for n, v in self.recent.items() if v[1] > now and (v[0], n) not in seen}
        return pods + [TrainerPod(name="(creating)", node=n, job_uid=uid, active=True)
                       for n, (uid, _) in self.recent.items()]

    def run(self, jobs: Iterable[JobView], nodes: list[GpuNode], pods: list[TrainerPod], now: datetime) -> Plan:
        """One pass: admit what fits, update queue positions and the queue/node metrics."""
        by_uid = {job.uid: job for job in jobs}
        waiting = [job for job in by_uid.values() if job.waiting()]
        plan = schedule([j.as_queued() for j in waiting], nodes, self.overlay(pods), now,
                        gpu_type_label=self.config.gpu_type_label,
                        always_tolerated=(resource_toleration(self.config.gpu_resource),))
        admitted = 0
        for admission in plan.admissions:
            try:
                self.admit(by_uid[admission.job_uid], admission, now)
                admitted += 1
            except Conflict as err:
                log.info("admission skipped, the job changed: %s", err)
        self.write_positions(by_uid, plan)
        self.metrics.set_queue_length(len(waiting) - admitted)
        self.metrics.set_gpu_nodes(busy=len(plan.busy_nodes) + admitted, free=len(plan.free_nodes))
        return plan

    def admit(self, job: JobView, admission: Admission, now: datetime) -> None:
        """Claims the job for the node (conditional status patch), then creates its trainer pod."""
        spec = JobSpec.model_validate(job.status.resolved_spec)
        attempt = job.status.attempt + 1
        pod = build_trainer_pod(job_name=job.name, namespace=job.namespace, job_uid=job.uid, spec=spec,
                                node=admission.node, gpus=admission.gpus, attempt=attempt, resume=attempt > 1,
                                config=self.config)
        name = pod["metadata"]["name"]
        self.lifecycle.write(job, st.admitted(job.status, node=admission.node, gpus=admission.gpus, pod=name,
                                              attempt=attempt, now=now))
        self.recent[admission.node] = (job.uid, time.monotonic() + RECENT_SECONDS)
        self.kube.ensure_service_account(job.namespace, self.config.trainer_service_account)
        self.kube.create_pod(pod)
        self.metrics.observe_admission((now - self.admissible_since(job, admission.node)).total_seconds())
        self.emit(job.body, "Normal", "NodeAssigned",
                  f"attempt {attempt} on node {admission.node} with {admission.gpus} GPU(s), pod {name}")

    def admissible_since(self, job: JobView, node: str) -> datetime:
        """When the job could first have taken the node: the later of queued-since and node-freed."""
        queued = next((c.last_transition_time for c in job.status.conditions
                       if c.type == ConditionType.ADMITTED and c.status == "False"), None)
        since = max(filter(None, (parse_time(queued), parse_time(job.status.not_before), self.node_freed.get(node))),
                    default=job.created)
        return since

    def write_positions(self, by_uid: dict[str, JobView], plan: Plan) -> None:
        """Patches queuePosition where it changed, head of the queue first, a bounded number per pass."""
        changed = sorted((pos, uid) for uid, pos in plan.positions.items()
                         if uid in by_uid and by_uid[uid].status.queue_position != pos)
        for pos, uid in changed[:POSITION_WRITES_PER_PASS]:
            job = by_uid[uid]
            try:
                self.kube.patch_job_status(job.namespace, job.name, {"queuePosition": pos}, job.resource_version)
            except Conflict:
                continue

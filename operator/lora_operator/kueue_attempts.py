"""The transitions of jobs whose attempts Kueue admits (`spec.queueName` with Kueue enabled): each
attempt is a batch/v1 Job behind the operator's admission gate, its Workload's state mirrored on the
job, and Kueue's eviction a disruption that costs no retry. Mixed into `lifecycle.Lifecycle`, whose
collaborators and transitions (fail, emit, the status writer, the dataset check) it uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import multikueue
from . import status_transitions as st
from .api import JobSpec, Phase, Reason
from .config import OperatorConfig
from .k8s import Kube, Refused
from .kueue import (
    ADMISSION_GATE,
    ADMISSION_GATED_BY,
    LABEL_PRIORITY_CLASS,
    WorkloadState,
    build_trainer_job,
    evicted_state,
    gate_state,
    gated,
    queue_name,
    without_gate,
    workload_state,
)
from .outcome import Outcome, OutcomeKind
from .render import pod_name
from .views import JobView

if TYPE_CHECKING:
    from .kueue_positions import KueuePositions
    from .status_writer import StatusWriter

EVICTABLE = frozenset({OutcomeKind.DISRUPTED, OutcomeKind.CRASHED, OutcomeKind.TRANSIENT})
"""How the pod of a Job that Kueue evicted can look ended: deleted, or failed with the SIGTERM exit."""


class KueueAttempts:
    """The Kueue half of a job's lifecycle (see the module's docstring)."""

    kube: Kube
    config: OperatorConfig
    statuses: StatusWriter | None
    node_gpus: Callable[[], int]
    emit: Callable[[Mapping[str, Any], str, str, str], None]
    fail: Callable[[JobView, str, str, datetime], None]
    check_dataset: Callable[..., tuple[Reason, str] | str | None]
    kueue_positions: KueuePositions | None = None
    """The places Kueue's visibility API gave (passed to `Lifecycle`): the waiting jobs' queuePosition."""

    def with_kueue_queue(self, spec: JobSpec, job: JobView) -> JobSpec:
        """With Kueue enabled, the resolved spec names the job's LocalQueue, also when only its
        label does: every later read (the scheduling pass, the follow loop) sees it there."""
        if self.config.kueue_enabled and (queue := queue_name(spec, job.labels)):
            return spec.model_copy(update={"queue_name": queue})
        return spec

    def wait_for_kueue(self, job: JobView, spec: JobSpec, queue: str, now: datetime) -> None:
        """A queued job that names a Kueue LocalQueue: its next attempt is a batch/v1 Job that Kueue
        admits. Until Kueue admits it and its pod is on a node, the job shows the Workload's state
        (Queued, Kueue's reason); then the attempt starts as one the scheduling pass admitted, and
        `follow_attempt` follows its pod (whose name carries the Job controller's suffix)."""
        attempt = job.status.attempt + 1
        name = pod_name(job.name, attempt)
        batch = self.kube.get_batch_job(job.namespace, name)
        if batch is None:
            if job.status.attempt:  # the ended attempt's Job: Kueue releases nothing while it is there
                self.kube.delete_batch_job(job.namespace, pod_name(job.name, job.status.attempt))
            self.kube.ensure_service_account(job.namespace, self.config.trainer_service_account)
            manifest = build_trainer_job(
                job_name=job.name, namespace=job.namespace, job_uid=job.uid, spec=spec, queue=queue,
                gpus=self.node_gpus(), attempt=attempt, resume=attempt > 1, config=self.config,
                priority_class=job.labels.get(LABEL_PRIORITY_CLASS), progress=job.status.progress)
            try:
                self.kube.create_batch_job(manifest)
            except Refused as err:
                return self.fail(job, Reason.POD_REFUSED, f"{err}; fix the job's spec", now)
            self.emit(job.body, "Normal", Reason.QUEUED, f"attempt {attempt}: Job {name} in Kueue LocalQueue {queue}")
            workload, state = None, workload_state(None)
        else:
            if gated(batch):
                return self.open_gate(job, spec, batch, now)
            workload = self.kube.workload_of(job.namespace, batch["metadata"]["uid"])
            state = workload_state(workload, bool(batch["spec"].get("suspend")))
        place = self.kueue_positions.place(job.namespace, name) if self.kueue_positions else None
        status = st.kueue_workload(job.status, state, now=now, place=place)
        if state.phase is Phase.RUNNING and not state.finished:
            placed = [p for p in self.kube.pods_of_batch_job(job.namespace, batch["metadata"]["uid"])
                      if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")]
            if worker := multikueue.worker_node(batch, workload):  # its pod runs on that cluster, not here
                placed = [{"metadata": {"name": name}, "spec": {"nodeName": worker}}]
            if placed:
                pod, node = placed[0]["metadata"]["name"], placed[0]["spec"]["nodeName"]
                self.statuses.write(job, st.admitted(status, node=node, gpus=self.node_gpus(), pod=pod,
                                                     attempt=attempt, now=now))
                return self.emit(job.body, "Normal", "NodeAssigned",
                                 f"Kueue admitted attempt {attempt}: node {node}, pod {pod}")
        if status != job.status:
            self.statuses.write(job, status)
        return None

    def open_gate(self, job: JobView, spec: JobSpec, batch: dict[str, Any], now: datetime) -> None:
        """The attempt's Job holds the operator's admission gate: it is removed once the dataset
        check passes, so Kueue's admission (and its WaitForPodsReady clock) starts with inputs that
        are there. A dataset found empty fails the job and its Job goes; storage that cannot answer
        keeps the gate, with the error on the status, until a later tick's check passes."""
        name = batch["metadata"]["name"]
        checked = self.check_dataset(job, spec)
        if isinstance(checked, tuple):
            self.kube.delete_batch_job(job.namespace, name)
            return self.fail(job, *checked, now)
        if checked:
            message = f"Kueue admission held ({ADMISSION_GATE}) until the dataset can be checked: {checked}"
            status = st.kueue_workload(job.status, gate_state(message), now=now)
            if status != job.status:
                self.statuses.write(job, status)
            return None
        gates = batch["metadata"]["annotations"][ADMISSION_GATED_BY]
        self.kube.annotate_batch_job(job.namespace, name, ADMISSION_GATED_BY, without_gate(gates, ADMISSION_GATE),
                                     batch["metadata"]["resourceVersion"])
        return self.emit(job.body, "Normal", Reason.QUEUED, f"dataset checked: Job {name} released to Kueue")

    def kueue_outcome(self, job: JobView, spec: JobSpec, pod: Mapping[str, Any] | None,
                      outcome: Outcome) -> tuple[Outcome, WorkloadState | None]:
        """The attempt of a Kueue job when Kueue evicted (preempted) its Job.

        While the pod is terminating (the trainer saving its state on SIGTERM) the attempt's Job
        is deleted: once the pod is gone Kueue would admit that Job again, and its controller
        would start a second pod of the attempt beside the next attempt's; the eviction stays on
        the status (``KueueEvicted``). When the pod has ended (143 after the save, or gone), the
        attempt is a disruption with Kueue's reason, not counted, whatever the exit code.

        Returns:
            The outcome, and the Workload's state when it is Kueue's eviction (else None).
        """
        if not (spec.queue_name and self.config.kueue_enabled):
            return outcome, None
        terminating = outcome.kind is OutcomeKind.STILL_RUNNING and pod is not None \
            and bool(pod["metadata"].get("deletionTimestamp"))
        if not terminating and outcome.kind not in EVICTABLE:
            return outcome, None
        state = self.kueue_eviction(job)
        if state is None:
            return outcome, None
        if terminating:
            self.kube.delete_batch_job(job.namespace, pod_name(job.name, job.status.attempt))
            status = st.mirror_workload(job.status, state)
            if status != job.status:
                self.statuses.write(job, status)
            return outcome, None
        evicted = state.eviction
        return Outcome(OutcomeKind.DISRUPTED, evicted.reason, f"Kueue evicted the Job: {evicted.message}",
                       outcome.exit_code), state

    def kueue_eviction(self, job: JobView) -> WorkloadState | None:
        """The current attempt's Workload state if Kueue ever evicted it: read from the Workload, or
        from the status once its Job was deleted (`kueue_outcome`); None without an eviction."""
        batch = self.kube.get_batch_job(job.namespace, pod_name(job.name, job.status.attempt))
        if batch is None:
            return evicted_state(job.status.conditions)
        state = workload_state(self.kube.workload_of(job.namespace, batch["metadata"]["uid"]),
                               bool(batch["spec"].get("suspend")))
        return state if state.eviction is not None else None

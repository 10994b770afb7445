"""Jobs admitted by Kueue: the batch/v1 Job of one attempt, and what its Workload says.

Pure, like render.py: a job that names a Kueue LocalQueue (spec.queueName or the
``kueue.x-k8s.io/queue-name`` label) skips the operator's own queue. Each attempt becomes a
suspended ``batch/v1`` Job holding the same hardened trainer pod that render.py builds; Kueue's
webhook makes a Workload of it, admits it (adding its flavor's node selector and tolerations)
and unsuspends it. The operator then follows the Workload's conditions: an eviction (Kueue
preempting the Job) is a disruption, shown as Queued with Kueue's reason and not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import JobSpec
from .api.conditions import Phase
from .api.status import Condition, Progress
from .config import OperatorConfig
from .multikueue import with_exit_codes
from .render import build_trainer_pod, pod_name

KUEUE_GROUP = "kueue.x-k8s.io"
LABEL_QUEUE_NAME = f"{KUEUE_GROUP}/queue-name"
"""On a Job: the LocalQueue Kueue admits it through. On a LoraTrainingJob: the same as spec.queueName."""
LABEL_PRIORITY_CLASS = f"{KUEUE_GROUP}/priority-class"
"""A WorkloadPriorityClass; copied from the LoraTrainingJob to its Jobs."""
ADMISSION_GATED_BY = f"{KUEUE_GROUP}/admission-gated-by"
"""A Job annotation (Kueue v0.19, beta): Kueue admits no Workload while it names a gate."""
ADMISSION_GATE = "lora-operator.io/inputs"
"""The operator's gate: every attempt's Job is created with it, removed once the dataset check passed."""
WORKLOAD_CONDITIONS = ("QuotaReserved", "Admitted", "Evicted", "Requeued", "PodsReady", "Finished")
"""The Workload conditions the job's status mirrors, each as ``Kueue<type>``."""
MIRROR_PREFIX = "Kueue"


def queue_name(spec: JobSpec, labels: dict[str, str] | None) -> str | None:
    """The LocalQueue a job names: spec.queueName, else its ``kueue.x-k8s.io/queue-name`` label."""
    return spec.queue_name or (labels or {}).get(LABEL_QUEUE_NAME) or None


def build_trainer_job(
    *,
    job_name: str,
    namespace: str,
    job_uid: str,
    spec: JobSpec,
    queue: str,
    gpus: int,
    attempt: int,
    resume: bool,
    config: OperatorConfig,
    priority_class: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job of one attempt of a job that Kueue admits.

    The pod template is the trainer pod of render.py, less its node affinity: Kueue and the
    scheduler pick the node, and the anti-affinity (no two trainers on one node, in any
    namespace) stays, so Kueue's jobs and the operator's own never share a node. The Job is
    created suspended and gated (`ADMISSION_GATE`: Kueue admits nothing until the operator
    removes it); it never retries by itself (backoffLimit 0): the operator decides about each
    attempt, as it does for its own pods. Its podFailurePolicy names the trainer's exit code in the
    Job's status (`multikueue.with_exit_codes`): on a MultiKueue worker that is all that comes back.

    Args:
        job_name: metadata.name of the LoraTrainingJob.
        namespace: Its namespace (the Job's too).
        job_uid: Its metadata.uid, for the owner reference and labels.
        spec: The resolved spec.
        queue: The LocalQueue (see `queue_name`).
        gpus: The GPUs of one node: the trainer takes a whole node.
        attempt: Attempt number, from 1.
        resume: Whether the trainer resumes from the saved state.
        config: The operator configuration.
        priority_class: A Kueue WorkloadPriorityClass, if the job names one.
        progress: The job's status.progress: its measured save time sets the pod's grace period.
    """
    pod = build_trainer_pod(job_name=job_name, namespace=namespace, job_uid=job_uid, spec=spec, node="",
                            gpus=gpus, attempt=attempt, resume=resume, config=config, progress=progress)
    pod_spec = pod["spec"]
    pod_spec["affinity"] = {"podAntiAffinity": pod_spec["affinity"]["podAntiAffinity"]}
    selector = dict(spec.placement.node_selector or {}) if spec.placement else {}
    if selector:
        pod_spec["nodeSelector"] = selector
    labels = {**pod["metadata"]["labels"], LABEL_QUEUE_NAME: queue}
    if priority_class:
        labels[LABEL_PRIORITY_CLASS] = priority_class
    return with_exit_codes({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": pod_name(job_name, attempt),
            "namespace": namespace,
            "labels": labels,
            "annotations": {ADMISSION_GATED_BY: ADMISSION_GATE},
            "ownerReferences": pod["metadata"]["ownerReferences"],
        },
        "spec": {
            "suspend": True,
            "parallelism": 1,
            "completions": 1,
            "backoffLimit": 0,
            "template": {"metadata": {"labels": pod["metadata"]["labels"]}, "spec": pod_spec},
        },
    })


@dataclass(frozen=True)
class WorkloadState:
    """What a Workload's conditions mean for the job.

    Attributes:
        phase: Queued while Kueue holds the Job (no quota yet, or evicted and requeued),
            Running once it is admitted and the Job unsuspended.
        reason: Kueue's reason (``Pending``, ``Preempted``, ``InadmissibleQuota`` ...).
        message: Kueue's message.
        disrupted: Kueue evicted an admitted Job: a disruption, not a failure; the next
            attempt resumes from the saved state and does not count against maxRetries.
        conditions: The Workload's conditions, mirrored as ``Kueue<type>``.
        finished: Kueue counts the Workload finished (its Job ended) and released its quota; the
            attempt's outcome is read from its pod, as for the operator's own pods.
    """

    phase: Phase
    reason: str
    message: str
    disrupted: bool
    conditions: tuple[Condition, ...]
    finished: bool = False

    @property
    def eviction(self) -> Condition | None:
        """Kueue's Evicted condition (mirrored) when it ever evicted this Workload: True while evicted,
        False ("Previously: ...") once it reserved quota again."""
        return next((c for c in self.conditions if c.type == MIRROR_PREFIX + "Evicted"), None)

    @property
    def holds_quota(self) -> bool:
        """Kueue counts this Workload against its ClusterQueue's quota."""
        return any(c.type == MIRROR_PREFIX + "QuotaReserved" and c.status == "True" for c in self.conditions) \
            and not self.finished


@dataclass(frozen=True)
class KueuePlace:
    """Where a pending Workload stands in Kueue's queues, from Kueue's visibility API; 1-based like
    status.queuePosition (Kueue counts from 0).

    Attributes:
        position: Its place in its ClusterQueue, the order Kueue admits in: the job's queuePosition.
        local_position: Its place among its LocalQueue's Workloads.
        local_queue: The LocalQueue.
    """

    position: int
    local_position: int
    local_queue: str

    @property
    def note(self) -> str:
        """For the job's message: whose position queuePosition is."""
        return (f"queuePosition {self.position} is Kueue's (its ClusterQueue's order; "
                f"{self.local_position} in LocalQueue {self.local_queue})")


def gated(batch_job: dict[str, Any]) -> bool:
    """The Job still carries the operator's admission gate."""
    gates = ((batch_job.get("metadata") or {}).get("annotations") or {}).get(ADMISSION_GATED_BY, "")
    return ADMISSION_GATE in [g.strip() for g in gates.split(",")]


def without_gate(gates: str, gate: str) -> str | None:
    """The admission-gated-by value with `gate` removed; None when no gate is left (the annotation goes)."""
    left = [g.strip() for g in gates.split(",") if g.strip() and g.strip() != gate]
    return ",".join(left) or None


def gate_state(message: str) -> WorkloadState:
    """The job's state while its Job holds the operator's admission gate (Kueue has no say yet)."""
    return WorkloadState(Phase.QUEUED, "AdmissionGated", message, False, ())


def evicted_state(conditions: list[Condition] | tuple[Condition, ...]) -> WorkloadState | None:
    """The state of a Workload that Kueue evicted, from its conditions as the job's status mirrored
    them (the Job and its Workload may be gone since), or None when they show no eviction."""
    mirrored = tuple(c for c in conditions if c.type.startswith(MIRROR_PREFIX))
    evicted = next((c for c in mirrored if c.type == MIRROR_PREFIX + "Evicted"), None)
    if evicted is None:
        return None
    return WorkloadState(Phase.QUEUED, evicted.reason or "Evicted", evicted.message or "", True, mirrored)


def _true(conditions: dict[str, dict[str, Any]], kind: str) -> bool:
    return conditions.get(kind, {}).get("status") == "True"


def workload_state(workload: dict[str, Any] | None, job_suspended: bool = True) -> WorkloadState:
    """The job's state from its Job's Workload (``None``: Kueue has not made one yet).

    Args:
        workload: The kueue.x-k8s.io Workload of the attempt's Job, as a dict.
        job_suspended: The Job's spec.suspend; Kueue suspends it again when it evicts.
    """
    if workload is None:
        return WorkloadState(Phase.QUEUED, "WorkloadPending", "waiting for Kueue to create the Workload",
                             False, ())
    found = {c.get("type", ""): c for c in (workload.get("status") or {}).get("conditions") or []}
    mirrored = tuple(
        Condition(type=MIRROR_PREFIX + kind, status=c.get("status", "Unknown"), reason=c.get("reason", ""),
                  message=c.get("message", ""), last_transition_time=c.get("lastTransitionTime"))
        for kind in WORKLOAD_CONDITIONS if (c := found.get(kind))
    )
    if _true(found, "Finished"):
        done = found["Finished"]
        return WorkloadState(Phase.RUNNING, done.get("reason", "Finished"), done.get("message", ""), False,
                             mirrored, finished=True)
    if _true(found, "Evicted"):
        evicted = found["Evicted"]
        return WorkloadState(Phase.QUEUED, evicted.get("reason", "Evicted"), evicted.get("message", ""), True,
                             mirrored)
    if _true(found, "Admitted") and not job_suspended:
        admitted = found["Admitted"]
        return WorkloadState(Phase.RUNNING, admitted.get("reason", "Admitted"), admitted.get("message", ""),
                             False, mirrored)
    waiting = found.get("QuotaReserved") or found.get("Admitted") or {}
    return WorkloadState(Phase.QUEUED, waiting.get("reason", "Pending"), waiting.get("message", ""), False,
                         mirrored)


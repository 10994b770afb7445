"""Typed views of the raw objects the watch streams deliver (jobs, pods, nodes). Pure parsing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .api import CleanPodPolicy, JobStatus, Phase
from .api.contract import COMPONENT, LABEL_ATTEMPT, LABEL_COMPONENT, LABEL_JOB_UID
from .outcome import PodSnapshot
from .scheduling import GpuNode, QueuedJob, Taint, Toleration, TrainerPod, model_key

TRAINER_COMPONENT = (LABEL_COMPONENT, COMPONENT)
JOB_UID_LABEL = LABEL_JOB_UID
ATTEMPT_LABEL = LABEL_ATTEMPT


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp of the API server as an aware datetime."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobView:
    """A LoraTrainingJob as the controller reads it."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    resource_version: str | None
    created: datetime
    spec: Mapping[str, Any]
    status: JobStatus
    deleting: bool
    body: Mapping[str, Any]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> JobView:
        meta = body["metadata"]
        return cls(
            namespace=meta["namespace"], name=meta["name"], uid=meta["uid"], generation=meta.get("generation"),
            resource_version=meta.get("resourceVersion"),
            created=parse_time(meta.get("creationTimestamp")) or utcnow(),
            spec=body.get("spec") or {}, status=JobStatus.model_validate(unpacked(body.get("status") or {})),
            deleting=bool(meta.get("deletionTimestamp")), body=body,
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def labels(self) -> Mapping[str, str]:
        return self.body["metadata"].get("labels") or {}

    @property
    def suspend_requested(self) -> bool:
        return bool(self.spec.get("suspend"))

    @property
    def cancel_requested(self) -> bool:
        return bool(self.spec.get("cancel"))

    @property
    def cleans_ended_pods(self) -> bool:
        """spec.cleanPodPolicy All (the default): a pod goes once its attempt ended; None keeps it."""
        return self.spec.get("cleanPodPolicy") != CleanPodPolicy.NONE

    def waiting(self) -> bool:
        """Queued for a node: resolved, not suspended, not finished, not being deleted."""
        return queued_job(self.body) is not None


KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                 "deletionTimestamp", "labels", "ownerReferences", "finalizers")
"""What the operator reads of an object's metadata. Not managedFields and annotations (kubectl's
last-applied-configuration, kopf's last-handled-configuration): over half of a job's bytes."""


@dataclass(frozen=True, slots=True)
class PackedSpec:
    """`status.resolvedSpec` as the index keeps it: compact JSON text, 1.4 KB where the parsed
    dicts take 10 KB (two thirds of a slim job), plus the placement every scheduling pass reads.
    Parsed again only where an attempt is followed or a pod rendered (`JobView.of`)."""

    text: str
    placement: Mapping[str, Any]
    model: str | None = None
    """The base model's `cache_affinity.model_key`, for cache-aware placement."""
    queue: str | None = None
    """spec.queueName: a Kueue job (`kueue_queue`)."""

    @classmethod
    def of(cls, resolved: Mapping[str, Any]) -> PackedSpec:
        return cls(json.dumps(resolved, separators=(",", ":")), resolved.get("placement") or {},
                   base_model_key(resolved), resolved.get("queueName"))

    def unpack(self) -> dict[str, Any]:
        return json.loads(self.text)


def kueue_queue(resolved: Any) -> str | None:
    """The Kueue LocalQueue a resolved spec names (set at resolve only while Kueue is enabled:
    spec.queueName, or the queue-name label): such a job is Kueue's to admit, not the scheduler's."""
    if isinstance(resolved, PackedSpec):
        return resolved.queue
    return (resolved or {}).get("queueName")


def unpacked(status: Mapping[str, Any]) -> Mapping[str, Any]:
    """A status whose resolvedSpec is a plain dict again (the index keeps it packed)."""
    resolved = status.get("resolvedSpec")
    return {**status, "resolvedSpec": resolved.unpack()} if isinstance(resolved, PackedSpec) else status


def slim_job(body: Mapping[str, Any]) -> dict[str, Any]:
    """A job body as the index keeps it: a 5 KB job parses to ~34 KB of dicts, this keeps ~5 KB
    (no managedFields or annotations, the resolved spec packed)."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    resolved = status.get("resolvedSpec")
    if isinstance(resolved, Mapping):
        status = {**status, "resolvedSpec": PackedSpec.of(resolved)}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {k: meta[k] for k in KEPT_METADATA if k in meta},
            "spec": body.get("spec") or {}, "status": status}


POD_STATUS = ("phase", "reason", "message")
CONDITION = ("type", "status", "reason", "message", "lastTransitionTime")
CONTAINER_STATUS = ("name", "state", "lastState")
"""What the operator reads of a pod's status (`pod_snapshot`): not its IPs, its containers' images,
mounts and resources, which are most of a status's bytes."""


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """A trainer pod as the index keeps it: metadata, where it runs, and what its status says of how
    it runs or ended (its spec carries the whole resolved job spec in an environment variable, which
    nothing reads back). With spec.cleanPodPolicy None ended pods stay until their job is deleted."""
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    slim = {k: status[k] for k in POD_STATUS if k in status}
    if status.get("conditions"):
        slim["conditions"] = [{k: c[k] for k in CONDITION if k in c} for c in status["conditions"]]
    if status.get("containerStatuses"):
        slim["containerStatuses"] = [{k: c[k] for k in CONTAINER_STATUS if k in c}
                                     for c in status["containerStatuses"]]
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {k: meta[k] for k in KEPT_METADATA if k in meta},
            "spec": {k: spec[k] for k in ("nodeName", "affinity") if k in spec},
            "status": slim}


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """What a scheduling pass needs of one job, read from the raw body without pydantic.

    The controller keeps one per job, rebuilt only when the job's resourceVersion changes, so a
    pass over thousands of jobs parses nothing and holds no second copy of their resolved specs.
    """

    uid: str
    resource_version: str | None
    phase: str | None
    queue_position: int | None
    queued: QueuedJob | None
    """The scheduler's view while the job waits for a node (`JobView.waiting()`), else None."""
    cached: tuple[str | None, tuple[str, ...]] = (None, ())
    """What its trainer reported its node's cache holds (`cache_report`)."""
    estimated_start: str | None = None
    """status.queue.estimatedStartTime as stored."""
    kueue_wait: KueueWait | None = None
    """While Kueue holds the job (`kueue_waiting`): where its place in Kueue's queue is read."""

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> QueueEntry:
        meta, status = body["metadata"], body.get("status") or {}
        queued = queued_job(body)
        return cls(uid=meta["uid"], resource_version=meta.get("resourceVersion"), phase=status.get("phase"),
                   queue_position=status.get("queuePosition"), queued=queued, cached=cache_report(status),
                   estimated_start=(status.get("queue") or {}).get("estimatedStartTime"),
                   kueue_wait=kueue_waiting(body))


@dataclass(frozen=True, slots=True)
class KueueWait:
    """A queued job that Kueue admits: its LocalQueue and the attempt its Job is for."""

    namespace: str
    name: str
    queue: str
    attempt: int


def kueue_waiting(body: Mapping[str, Any]) -> KueueWait | None:
    """The Kueue wait of a Queued job that names a LocalQueue (not suspended, cancelled or being
    deleted), else None."""
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    queue = kueue_queue(status.get("resolvedSpec"))
    if (status.get("phase") != Phase.QUEUED or not queue or spec.get("suspend") or spec.get("cancel")
            or meta.get("deletionTimestamp")):
        return None
    return KueueWait(meta["namespace"], meta["name"], queue, int(status.get("attempt") or 0) + 1)


def queued_job(body: Mapping[str, Any]) -> QueuedJob | None:
    """The scheduler's view of a job that waits for a node (Queued, resolved, not suspended or
    cancelled, not being deleted), read from the raw body without pydantic; None for any other job."""
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    resolved = status.get("resolvedSpec")
    if (status.get("phase") != Phase.QUEUED or resolved is None or spec.get("suspend") or spec.get("cancel")
            or meta.get("deletionTimestamp") or kueue_queue(resolved)):
        return None
    placement = resolved.placement if isinstance(resolved, PackedSpec) else resolved.get("placement") or {}
    model = resolved.model if isinstance(resolved, PackedSpec) else base_model_key(resolved)
    return QueuedJob(
        uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], priority=int(spec.get("priority", 0)),
        created=parse_time(meta.get("creationTimestamp")) or utcnow(),
        not_before=parse_time(status.get("notBefore")),
        node_selector=dict(placement.get("nodeSelector") or {}),
        tolerations=tuple(Toleration.from_mapping(t) for t in placement.get("tolerations") or ()),
        gpu_type=placement.get("gpuType"), model=model,
    )


def base_model_key(resolved: Mapping[str, Any]) -> str | None:
    base = resolved.get("baseModel") or {}
    return model_key(base.get("uri"), base.get("revision"))


def cache_report(status: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    """(node, model keys) its trainer last reported in its node's cache (status.cachedOn, status.models)."""
    return status.get("cachedOn"), tuple(m["uri"] for m in status.get("models") or () if m.get("uri"))


def gpu_node(body: Mapping[str, Any], gpu_resource: str) -> GpuNode | None:
    """The scheduling view of a Node, or None when it has no GPUs."""
    status = body.get("status") or {}
    gpus = int(str((status.get("allocatable") or {}).get(gpu_resource, "0")) or 0)
    if gpus <= 0:
        return None
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
    spec = body.get("spec") or {}
    return GpuNode(
        name=body["metadata"]["name"], ready=ready, schedulable=not spec.get("unschedulable", False), gpus=gpus,
        labels=dict(body["metadata"].get("labels") or {}),
        taints=tuple(Taint.from_mapping(t) for t in spec.get("taints") or ()),
    )


def pod_target_node(body: Mapping[str, Any]) -> str | None:
    """The node a trainer pod runs on, or the one its required node affinity pins it to."""
    node = (body.get("spec") or {}).get("nodeName")
    if node:
        return node
    terms = (((body.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
    for term in terms:
        for field in term.get("matchFields") or ():
            if field.get("key") == "metadata.name" and field.get("values"):
                return field["values"][0]
    return None


def pod_active(body: Mapping[str, Any]) -> bool:
    return (body.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def trainer_pod(body: Mapping[str, Any]) -> TrainerPod:
    meta = body["metadata"]
    return TrainerPod(name=meta["name"], node=pod_target_node(body), job_uid=meta["labels"].get(JOB_UID_LABEL, ""),
                      active=pod_active(body), namespace=meta["namespace"])


def pod_snapshot(body: Mapping[str, Any] | None, *, node_exists: bool) -> PodSnapshot:
    """What the outcome classifier needs from a trainer pod (None: the pod is gone)."""
    if body is None:
        return PodSnapshot(phase="Unknown", missing=True)
    status = body.get("status") or {}
    container = next(iter(status.get("containerStatuses") or ()), {})
    state = container.get("state") or {}
    terminated = state.get("terminated") or container.get("lastState", {}).get("terminated") or {}
    waiting = state.get("waiting") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or ()}
    scheduled = conditions.get("PodScheduled", {})
    unschedulable = scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
    return PodSnapshot(
        phase=status.get("phase", "Pending"),
        exit_code=terminated.get("exitCode"),
        terminated_reason=terminated.get("reason"),
        termination_message=terminated.get("message"),
        status_reason=status.get("reason"),
        status_message=status.get("message"),
        disruption_target=conditions.get("DisruptionTarget", {}).get("status") == "True",
        node_deleted=bool(pod_target_node(body)) and not node_exists,
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        unschedulable_since=parse_time(scheduled.get("lastTransitionTime")) if unschedulable else None,
        waiting_since=parse_time(scheduled.get("lastTransitionTime")) or parse_time(body["metadata"].get(
            "creationTimestamp")),
    )

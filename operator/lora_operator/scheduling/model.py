"""Snapshots the scheduler reads and the plan it returns: plain frozen dataclasses.

The k8s adapter turns jobs, nodes and pods into these; the scheduler never sees a Kubernetes
object, so it runs in microseconds in unit tests and the same way on every cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

SCHEDULING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
"""Taint effects a pod must tolerate to land on a node (PreferNoSchedule is only a preference)."""


@dataclass(frozen=True, slots=True)
class Taint:
    """A node taint."""

    key: str
    value: str | None = None
    effect: str = "NoSchedule"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Taint:
        """A taint from its resource form (``{"key", "value", "effect"}``)."""
        return cls(key=data.get("key") or "", value=data.get("value") or None, effect=data.get("effect") or "")


@dataclass(frozen=True, slots=True)
class Toleration:
    """A pod toleration, with the Kubernetes matching rules in `tolerates`."""

    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Toleration:
        """A toleration from its resource form; `api.spec.Toleration.model_dump()` works too."""
        return cls(
            key=data.get("key") or None,
            operator=data.get("operator") or "Equal",
            value=data.get("value") or None,
            effect=data.get("effect") or None,
        )

    def tolerates(self, taint: Taint) -> bool:
        """Whether this toleration tolerates `taint` (k8s.io/api/core/v1 ToleratesTaint).

        An empty effect matches every effect; an empty key with operator Exists matches every
        taint; Exists ignores the value; Equal compares values (unset equals empty).
        """
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        if self.operator == "Equal":
            return (self.value or "") == (taint.value or "")
        return False


Placement = tuple[frozenset[tuple[str, str]], frozenset[Toleration], str | None]
"""What decides where a job fits: node selector items, tolerations, GPU type."""
_PLACEMENTS: dict[Placement, Placement] = {}
"""Each distinct placement once (a few per cluster): ten thousand jobs share a handful of tuples."""


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """A job that waits for a GPU node (Admitted is not True)."""

    uid: str
    namespace: str
    name: str
    priority: int
    created: datetime
    """metadata.creationTimestamp: FIFO order within a namespace and priority."""
    not_before: datetime | None = None
    """Backoff: the job keeps its place but is not admitted before this time."""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    gpu_type: str | None = None
    """Required value of the GPU-type node label, if any."""
    model: str | None = None
    """Its base model (`cache_affinity.model_key`): a free node whose cache holds it is preferred."""
    placement: Placement = field(init=False, compare=False, repr=False)
    """What decides where it fits (node selector items, tolerations, GPU type), made once: a pass
    groups thousands of waiting jobs by it. Jobs with equal placements share one tuple."""

    def __post_init__(self) -> None:
        placement = (frozenset(self.node_selector.items()), frozenset(self.tolerations), self.gpu_type)
        object.__setattr__(self, "placement", _PLACEMENTS.setdefault(placement, placement))


@dataclass(frozen=True, slots=True)
class GpuNode:
    """A node with GPUs, as far as scheduling cares."""

    name: str
    ready: bool
    schedulable: bool
    """False when cordoned (spec.unschedulable)."""
    gpus: int
    """Allocatable GPUs; a trainer takes them all."""
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    class_key: tuple = field(init=False, compare=False, repr=False)
    """What makes free nodes interchangeable (labels, taints, GPUs), made once per node view: each
    pass groups its free nodes by it (`fit.FreePool`), and two frozensets per free node per pass
    were a quarter of a pass at 1000 nodes (bench/RESULTS.md, issue 17)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_key", (frozenset(self.labels.items()), frozenset(self.taints), self.gpus))


@dataclass(frozen=True, slots=True)
class TrainerPod:
    """A trainer pod the operator created."""

    name: str
    node: str | None
    """The node the pod is bound to or targets through its required node affinity (so a
    Pending pod already holds its node); None only when unknown."""
    job_uid: str
    active: bool
    """Not finished (phase not Succeeded/Failed), including a pod still terminating."""
    namespace: str = ""
    """The job's namespace; its active pods push its waiting jobs back a turn (fairness
    across scheduling passes). Optional: empty means no fairness credit."""


@dataclass(frozen=True, slots=True)
class Admission:
    """A decision: create the trainer pod of `job_uid` on `node`, using all its `gpus`."""

    job_uid: str
    node: str
    gpus: int
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)
    """The node's labels, for what the trainer pod learns of its node (its GPU memory); not compared:
    they are the named node's."""


@dataclass(frozen=True, slots=True)
class Plan:
    """The outcome of one scheduling pass."""

    admissions: list[Admission]
    """Jobs to start now, in queue order; never two on one node."""
    positions: Mapping[str, int]
    """1-based queue position of every job left waiting (backoff included), in admission order
    (worked out when first read: `queue.QueuePositions`)."""
    free_nodes: tuple[str, ...] = ()
    """Usable nodes that no job took in this pass (for the gpu_nodes metric)."""
    busy_nodes: tuple[str, ...] = ()
    """GPU nodes holding an active trainer pod before this pass."""
    next_wakeup: datetime | None = None
    """The earliest not_before of a job in backoff: when another pass may admit more."""
    limited: frozenset[str] = frozenset()
    """Jobs passed over because their namespace holds its node limit (they are in `positions`)."""

"""Which free node a job may take: placement matching and an index of free nodes.

Thousands of jobs usually share a handful of placements (selector, tolerations, GPU type)
and nodes come in a handful of pools (same labels, taints and GPU count). The pool groups
free nodes into classes of interchangeable nodes and remembers, per placement, which
classes fit, so a pass costs O(jobs + placements x classes) fit checks, not jobs x nodes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .cache_affinity import prefer_cached
from .model import SCHEDULING_EFFECTS, GpuNode, Placement, QueuedJob, Taint, Toleration

STATE_TAINT_PREFIX = "node.kubernetes.io/"
"""Taints Kubernetes sets from a node's state (cordoned: `unschedulable`; `not-ready`, `unreachable`,
the pressure taints) and takes off again: while one is on, the node is not free, but it still
matches a job's placement. A cordon of every GPU node told each waiting job NoMatchingNode (a
status write and a Warning Event each, and a write back when it ended: issue 17)."""


def placement_of(job: QueuedJob) -> Placement:
    """The hashable placement of a job; jobs with equal placements fit the same nodes."""
    return job.placement


def resource_toleration(resource: str) -> Toleration:
    """The toleration every trainer pod carries for the GPU resource taint (e.g. nvidia.com/gpu).

    The renderer adds it to the pod, and the scheduler must assume it, or the two disagree
    about nodes tainted like the GPU operator's ``nvidia.com/gpu:NoSchedule``.
    """
    return Toleration(key=resource, operator="Exists", effect="NoSchedule")


def tolerated(taints: Iterable[Taint], tolerations: Iterable[Toleration]) -> bool:
    """Whether every NoSchedule/NoExecute taint is tolerated by some toleration."""
    tolerations = tuple(tolerations)
    return all(any(t.tolerates(taint) for t in tolerations) for taint in taints if taint.effect in SCHEDULING_EFFECTS)


def fits(
    job: QueuedJob,
    node: GpuNode,
    *,
    gpu_type_label: str,
    always_tolerated: Sequence[Toleration] = (),
) -> bool:
    """Whether `job` may run on `node` (ignoring whether the node is free).

    Args:
        job: The waiting job.
        node: The candidate node.
        gpu_type_label: Node label compared with ``job.gpu_type``.
        always_tolerated: Tolerations every trainer pod carries besides the job's own.
    """
    return _fits(placement_of(job), node.labels, node.taints, gpu_type_label, always_tolerated)


def unmatched(
    jobs: Iterable[QueuedJob],
    nodes: Sequence[GpuNode],
    *,
    gpu_type_label: str,
    always_tolerated: Sequence[Toleration] = (),
) -> frozenset[str]:
    """The uids of the jobs that no node of `nodes` could ever take, busy or free (no node has
    their GPU type, selector labels or tolerated taints, `STATE_TAINT_PREFIX` ones aside): they wait
    for a node to join. Checked once per distinct placement (`unmatched_by_placement`)."""
    by_placement: dict[Placement, list[str]] = {}
    for job in jobs:
        by_placement.setdefault(placement_of(job), []).append(job.uid)
    return unmatched_by_placement(by_placement, nodes, gpu_type_label=gpu_type_label,
                                  always_tolerated=always_tolerated)


def unmatched_by_placement(
    by_placement: Mapping[Placement, Iterable[str]],
    nodes: Sequence[GpuNode],
    *,
    gpu_type_label: str,
    always_tolerated: Sequence[Toleration] = (),
    memo: dict[Placement, bool] | None = None,
) -> frozenset[str]:
    """`unmatched` for jobs already grouped by placement (placement -> uids). `memo` (placement ->
    whether no node of these `nodes` could take it) is filled and read, so a caller that keeps it
    while the nodes stay the same checks each placement once, not once per call."""
    memo = {} if memo is None else memo
    for placement in by_placement.keys() - memo.keys():
        memo[placement] = fits_no_node(placement, nodes, gpu_type_label=gpu_type_label,
                                       always_tolerated=always_tolerated)
    return frozenset(uid for placement, uids in by_placement.items() if memo[placement] for uid in uids)


def fits_no_node(placement: Placement, nodes: Sequence[GpuNode], *, gpu_type_label: str,
                 always_tolerated: Sequence[Toleration] = ()) -> bool:
    """Whether no node of `nodes`, busy or free, could take a job of this placement (a node's state
    taints aside: `STATE_TAINT_PREFIX`)."""
    return not any(_fits(placement, n.labels, _lasting(n.taints), gpu_type_label, always_tolerated) for n in nodes)


def _lasting(taints: Iterable[Taint]) -> tuple[Taint, ...]:
    return tuple(t for t in taints if not t.key.startswith(STATE_TAINT_PREFIX))


def _fits(
    placement: Placement,
    labels: Mapping[str, str],
    taints: Iterable[Taint],
    gpu_type_label: str,
    always_tolerated: Sequence[Toleration],
) -> bool:
    selector, tolerations, gpu_type = placement
    if any(labels.get(key) != value for key, value in selector):
        return False
    if gpu_type is not None and labels.get(gpu_type_label) != gpu_type:
        return False
    return tolerated(taints, (*tolerations, *always_tolerated))


@dataclass(slots=True)
class _NodeClass:
    """Free nodes with equal labels, taints and GPU count: any of them serves a job alike."""

    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    gpus: int
    names: list[str]
    """Free node names, sorted; taken from the front."""
    demand: int = 0
    """Eligible waiting jobs that fit this class (set by `FreePool.count_demand`)."""
    placements: set = field(default_factory=set)
    """The placements of those jobs: classes with the same ones (and GPUs) are alike to every job
    of the pass, so handing out one instead of the other changes no other job's admission."""
    taken: int = 0

    @property
    def available(self) -> int:
        return len(self.names) - self.taken


@dataclass
class FreePool:
    """The free nodes of one pass, grouped into classes, handed out at most once each.

    The grouping is made when a job first asks (`count_demand`, `take`): a pass with no job to
    admit (the queue empty, every job in backoff) only counts the free nodes and lists them. With
    nodes labelled by hostname, as kubelets and kwok label them, each free node is a class of its own,
    and grouping 1000 of them was most of such a pass (bench/RESULTS.md, issue 17)."""

    gpu_type_label: str
    always_tolerated: tuple[Toleration, ...] = ()
    free: list[GpuNode] = field(default_factory=list)
    """The free nodes, as given to `build`."""
    remaining: int = 0
    _classes: list[_NodeClass] | None = None
    _fitting: dict[Placement, list[_NodeClass]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, nodes: Iterable[GpuNode], *, gpu_type_label: str, always_tolerated: Sequence[Toleration] = ()
    ) -> FreePool:
        """Index free nodes; the caller has already dropped busy, not-ready and cordoned ones."""
        free = list(nodes)
        return cls(gpu_type_label, tuple(always_tolerated), free, len(free))

    @property
    def classes(self) -> list[_NodeClass]:
        """The free nodes grouped by `GpuNode.class_key` (labels, taints, GPUs), in first-seen order,
        each class's names sorted; grouped on first use."""
        if self._classes is None:
            groups: dict[tuple, _NodeClass] = {}
            for node in self.free:
                group = groups.get(node.class_key)
                if group is None:
                    group = groups[node.class_key] = _NodeClass(node.labels, tuple(node.taints), node.gpus, [])
                group.names.append(node.name)
            for group in groups.values():
                group.names.sort()
            self._classes = list(groups.values())
        return self._classes

    def fitting(self, placement: Placement) -> list[_NodeClass]:
        """Classes a placement fits, least demanded first (memoized per placement)."""
        found = self._fitting.get(placement)
        if found is None:
            found = self._fitting[placement] = self._sorted(self._match(placement))
        return found

    def count_demand(self, jobs: Iterable[QueuedJob]) -> None:
        """Count, per class, the eligible jobs that could use it.

        Must run before the first `take`: the fitting lists are ordered by this demand so
        a flexible job takes the node fewest other jobs can use, leaving scarce nodes to the
        jobs that need them.
        """
        self.count_demand_by(Counter(placement_of(job) for job in jobs))

    def count_demand_by(self, demand: Mapping[Placement, int]) -> None:
        """`count_demand` from the eligible jobs counted by placement (each count above zero)."""
        for placement, count in demand.items():
            matched = self._fitting[placement] = self._match(placement)
            for node_class in matched:
                node_class.demand += count
                node_class.placements.add(placement)
        for placement, matched in self._fitting.items():
            self._fitting[placement] = self._sorted(matched)

    def _match(self, placement: Placement) -> list[_NodeClass]:
        return [
            c for c in self.classes if _fits(placement, c.labels, c.taints, self.gpu_type_label, self.always_tolerated)
        ]

    @staticmethod
    def _sorted(classes: list[_NodeClass]) -> list[_NodeClass]:
        # Least demanded first, then the smallest node, then by name: deterministic.
        return sorted(classes, key=lambda c: (c.demand, c.gpus, c.names[0]))

    def take(self, job: QueuedJob, holders: frozenset[str] = frozenset()) -> tuple[str, int, Mapping[str, str]] | None:
        """Hand the job a free node it fits (name, GPUs, labels), or None; a node is never handed out twice.

        `holders`: nodes whose model cache holds the job's base model. One of them goes first when it
        is in the class the job takes from or in a class alike to every job of the pass (same
        fitting placements and GPUs, `_NodeClass.placements`; `cache_affinity`), so the choice
        changes no other job's admission."""
        if self.remaining == 0:
            return None
        classes = self.fitting(placement_of(job))
        for index, node_class in enumerate(classes):
            if node_class.available > 0:
                # Classes before this one are used up for good: drop them so later jobs
                # with the same placement do not scan them again.
                del classes[:index]
                if holders:
                    node_class = _holding_twin(classes, node_class, holders)
                    _cached_first(node_class, holders)
                name = node_class.names[node_class.taken]
                node_class.taken += 1
                self.remaining -= 1
                return name, node_class.gpus, node_class.labels
        classes.clear()
        return None

    def untaken(self) -> tuple[str, ...]:
        """Names of the free nodes no job took, sorted."""
        if self._classes is None:  # none asked for a node: all of them
            return tuple(sorted(node.name for node in self.free))
        return tuple(sorted(n for c in self.classes for n in c.names[c.taken :]))


def _cached_first(node_class: _NodeClass, holders: frozenset[str]) -> None:
    """Moves the first untaken node of the class that holds the model to the front of the untaken ones."""
    names, start = node_class.names, node_class.taken
    at = start + prefer_cached(names[start:], holders)
    names[start], names[at] = names[at], names[start]


def _holding_twin(classes: list[_NodeClass], chosen: _NodeClass, holders: frozenset[str]) -> _NodeClass:
    """`chosen`, or a class alike to it for every job of the pass that has a free node holding the model."""
    def holds(node_class: _NodeClass) -> bool:
        return any(name in holders for name in node_class.names[node_class.taken:])

    if holds(chosen):
        return chosen
    return next((c for c in classes if c.available > 0 and c.gpus == chosen.gpus
                 and c.placements == chosen.placements and holds(c)), chosen)

"""One scheduling pass: waiting jobs + GPU nodes + trainer pods + now -> a Plan.

The pass is greedy in queue order (see `order`): each job not in backoff takes a free node
it fits, if one is left. Consequences, chosen on purpose:

* No head-of-line blocking: a job that fits no free node is passed over, and jobs behind it
  that fit other nodes are admitted.
* No starvation of that head either: it stays first in the order, so the first node it
  fits that becomes free goes to it before any job behind it.
* Among fitting free nodes a job takes the one the fewest eligible waiting jobs could use
  (then the one with the fewest GPUs, then by name), so a job that runs anywhere does not
  take the only H100 node a job further down is waiting for.
* Among those, a node whose model cache holds the job's base model comes first
  (`cache_affinity`); the order of the queue never changes for it.
* A namespace with a node limit (`node_limits`) that holds that many nodes (active trainer
  pods) gets no more: its jobs keep their places and are passed over like jobs that fit no
  free node.

Safety holds whatever the input: a node with an active trainer pod (Pending ones count,
they target their node through required node affinity) is never handed out, a node is
handed out at most once per pass, and a job with an active pod is never admitted.

Cost: O(N log N) for N nodes, one fit check per distinct placement and node class, and the
head of the queue order up to the last free node handed out, over a `queue.WaitingQueue` (the
operator keeps one between passes; given a snapshot, `schedule` builds one, O(J log J) for J jobs). The positions
of the jobs left waiting are worked out only when read.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TypeVar

from .cache_affinity import holding
from .fit import FreePool
from .model import Admission, GpuNode, Plan, QueuedJob, Toleration, TrainerPod
from .order import turns_by_namespace
from .queue import QueuePositions, WaitingQueue

T = TypeVar("T")


def schedule(
    queued: WaitingQueue | Iterable[QueuedJob],
    nodes: Iterable[GpuNode],
    pods: Iterable[TrainerPod],
    now: datetime,
    *,
    gpu_type_label: str,
    always_tolerated: Sequence[Toleration] = (),
    node_limits: Mapping[str, int] | None = None,
    caches: Mapping[str, frozenset[str]] | None = None,
) -> Plan:
    """Decide which waiting jobs start now and on which node.

    The queue order is walked only until no free node is left; the positions of the jobs left
    waiting are worked out when they are first read (`QueuePositions`).

    Args:
        queued: Jobs waiting for a node (Admitted not True, not suspended, not finished): a
            `WaitingQueue` kept between passes (not changed here), or a snapshot of them.
        nodes: All GPU nodes.
        pods: The operator's trainer pods (finished ones are ignored).
        now: The time of the pass; jobs whose not_before is later are skipped.
        gpu_type_label: Node label that ``QueuedJob.gpu_type`` must equal.
        always_tolerated: Tolerations every trainer pod carries besides the job's own,
            i.e. ``(resource_toleration(config.gpu_resource),)``.
        node_limits: Most nodes a namespace may hold at once, by namespace; ``"*"`` is the
            limit of namespaces not listed. Absent: no limit.
        caches: The model keys each node's cache holds (`cache_affinity.node_caches`): among the
            free nodes a job fits it takes one holding its base model. Absent: no preference.

    Returns:
        The admissions (queue order) and the positions of the jobs left waiting.
    """
    queue = queued if isinstance(queued, WaitingQueue) else WaitingQueue(queued)
    pods = [pod for pod in pods if pod.active]
    busy = {pod.node for pod in pods if pod.node is not None}
    leaving = queue.among({pod.job_uid for pod in pods})  # waiting, yet a pod holds a node

    all_nodes = _unique(nodes, _name)
    usable = [n for n in all_nodes if n.ready and n.schedulable and n.gpus > 0]
    pool = FreePool.build(
        (n for n in usable if n.name not in busy),
        gpu_type_label=gpu_type_label,
        always_tolerated=always_tolerated,
    )
    turns = turns_by_namespace(pod.namespace for pod in pods)
    view = queue.view(leaving)
    admissions: list[Admission] = []
    limited: set[str] = set()
    limits = node_limits or {}
    held = Counter(pod.namespace for pod in pods) if limits else Counter()

    def at_limit(namespace: str) -> bool:  # only called with limits: a pass over 5000 jobs pays nothing without
        limit = node_limit(limits, namespace)
        return limit is not None and held[namespace] >= limit

    if pool.remaining:
        pool.count_demand_by(queue.eligible_by_placement(now, leaving, at_limit if limits else None))
    for job in view.ordered(turns):
        if not pool.remaining:
            break  # no node left to hand out: the rest only get their positions
        if _in_backoff(job, now):
            continue
        if limits and at_limit(job.namespace):
            limited.add(job.uid)
            continue
        taken = pool.take(job, holding(job.model, caches) if caches else frozenset())
        if taken is not None:
            held[job.namespace] += 1
            admissions.append(Admission(job_uid=job.uid, node=taken[0], gpus=taken[1], labels=taken[2]))

    return Plan(
        admissions=admissions,
        positions=QueuePositions(view, turns, frozenset(a.job_uid for a in admissions)),
        free_nodes=pool.untaken(),
        busy_nodes=tuple(sorted(n.name for n in all_nodes if n.name in busy)),
        next_wakeup=queue.next_wakeup(now, leaving),
        limited=frozenset(limited),
    )


def node_limit(limits: Mapping[str, int], namespace: str) -> int | None:
    """The most nodes `namespace` may hold under `limits` (``"*"``: namespaces not listed); None: no limit."""
    return limits.get(namespace, limits.get("*"))


def _in_backoff(job: QueuedJob, now: datetime) -> bool:
    return job.not_before is not None and job.not_before > now


_name = operator.attrgetter("name")


def _unique(items: Iterable[T], key: Callable[[T], str]) -> list[T]:
    """First occurrence of each key, in input order (a snapshot may list an object twice)."""
    items = list(items)
    keys = list(map(key, items))
    if len(set(keys)) == len(keys):  # the usual case, checked in C: a pass reads 1000 nodes
        return items
    seen: set[str] = set()
    unique: list[T] = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            unique.append(item)
    return unique

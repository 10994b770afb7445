"""Queue order: higher priority first; at equal priority the namespaces take turns.

Within one priority level each namespace's jobs are FIFO by creation time (uid breaks ties).
Namespaces take turns round-robin: round r holds the r-th waiting job of every namespace,
and within a round the namespaces go in the order of their oldest waiting job (then name).

A namespace's active trainer pods count as turns it already had: a namespace with two
running jobs enters at round 2. Without that credit the turns would only alternate within
one pass, and a namespace that queued a hundred jobs first would keep winning pass after
pass as nodes free up one at a time.

A job in backoff keeps its place in this order; the planner only skips it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime

from .model import QueuedJob

OrderKey = tuple[int, int, tuple[datetime, str, str], str, tuple[datetime, str, str]]


def fifo_key(job: QueuedJob) -> tuple[datetime, str, str]:
    """Order within one namespace and priority: creation time, then name, then uid.

    creationTimestamp has one-second resolution: jobs applied together (one `kubectl apply` of
    job-01..job-20) tie on it, and their names are the order the user wrote down.
    """
    return job.created, job.name, job.uid


def queue_order(jobs: Iterable[QueuedJob], turns_taken: Mapping[str, int] | None = None) -> list[QueuedJob]:
    """The jobs in the order they would be admitted if every one fitted every node.

    Args:
        jobs: Waiting jobs (backoff included), each uid once.
        turns_taken: Per namespace, turns already held (its active trainer pods).

    Returns:
        A new list; O(n log n).
    """
    turns_taken = turns_taken or {}
    lanes: dict[tuple[int, str], list[QueuedJob]] = defaultdict(list)
    for job in jobs:
        lanes[job.priority, job.namespace].append(job)
    keyed: list[tuple[OrderKey, QueuedJob]] = []
    for (priority, namespace), lane in lanes.items():
        lane.sort(key=fifo_key)
        head = fifo_key(lane[0])
        offset = turns_taken.get(namespace, 0)
        for rank, job in enumerate(lane):
            key = (-priority, offset + rank, head, namespace, fifo_key(job))
            keyed.append((key, job))
    keyed.sort(key=lambda item: item[0])
    return [job for _, job in keyed]


def turns_by_namespace(namespaces: Iterable[str]) -> dict[str, int]:
    """Count active trainer pods per namespace (empty namespaces ignored)."""
    counts: dict[str, int] = defaultdict(int)
    for namespace in namespaces:
        if namespace:
            counts[namespace] += 1
    return dict(counts)

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
from typing import NamedTuple

from .model import QueuedJob


class _Lane(NamedTuple):
    """One namespace's waiting jobs at one priority, FIFO, and the turns it already had."""

    head: tuple[datetime, str, str]
    namespace: str
    turns: int
    jobs: list[QueuedJob]


def fifo_key(job: QueuedJob) -> tuple[datetime, str, str]:
    """Order within one namespace and priority: creation time, then name, then uid.

    creationTimestamp has one-second resolution: jobs applied together (one `kubectl apply` of
    job-01..job-20) tie on it, and their names are the order the user wrote down.
    """
    return job.created, job.name, job.uid


def queue_order(jobs: Iterable[QueuedJob], turns_taken: Mapping[str, int] | None = None) -> list[QueuedJob]:
    """The jobs in the order they would be admitted if every one fitted every node.

    The order is that of the key (-priority, turns taken + FIFO index in its lane, the lane's
    oldest job, namespace). It is built round by round instead of by sorting every job on that
    key: within a priority, round r takes, lane after lane (a lane is one
    namespace's jobs; lanes go by their oldest job, then namespace), the job at FIFO index
    r - turns taken, if the lane has one. Only the lanes are sorted, so a pass over thousands
    of waiting jobs makes no tuple comparisons across namespaces.

    Args:
        jobs: Waiting jobs (backoff included), each uid once.
        turns_taken: Per namespace, turns already held (its active trainer pods).

    Returns:
        A new list; O(n log n) for the lanes' FIFO sorts, O(n + rounds x lanes) for the rest.
    """
    turns_taken = turns_taken or {}
    lanes: dict[tuple[int, str], list[QueuedJob]] = defaultdict(list)
    for job in jobs:
        lanes[job.priority, job.namespace].append(job)
    levels: dict[int, list[_Lane]] = defaultdict(list)
    for (priority, namespace), lane in lanes.items():
        lane.sort(key=fifo_key)
        levels[priority].append(_Lane(fifo_key(lane[0]), namespace, turns_taken.get(namespace, 0), lane))
    ordered: list[QueuedJob] = []
    for priority in sorted(levels, reverse=True):
        live = sorted(levels[priority], key=lambda lane: (lane.head, lane.namespace))
        round_ = min(lane.turns for lane in live)
        while live:
            for lane in live:
                if 0 <= round_ - lane.turns < len(lane.jobs):
                    ordered.append(lane.jobs[round_ - lane.turns])
            round_ += 1
            live = [lane for lane in live if round_ - lane.turns < len(lane.jobs)]
    return ordered


def turns_by_namespace(namespaces: Iterable[str]) -> dict[str, int]:
    """Count active trainer pods per namespace (empty namespaces ignored)."""
    counts: dict[str, int] = defaultdict(int)
    for namespace in namespaces:
        if namespace:
            counts[namespace] += 1
    return dict(counts)

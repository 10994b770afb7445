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

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from .model import QueuedJob


class _Lane(NamedTuple):
    """One namespace's waiting jobs at one priority, FIFO, and the turns it already had."""

    head: tuple[datetime, str, str]
    namespace: str
    turns: int
    jobs: Sequence[QueuedJob]


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
        A new list; O(n log n) for the lanes' FIFO sorts, O(n + rounds x lanes) for the rest
        (`in_turns`).
    """
    lanes: dict[tuple[int, str], list[QueuedJob]] = defaultdict(list)
    for job in jobs:
        lanes[job.priority, job.namespace].append(job)
    for lane in lanes.values():
        lane.sort(key=fifo_key)
    return list(in_turns(lanes, turns_taken or {}))


def in_turns(lanes: Mapping[tuple[int, str], Sequence[QueuedJob]],
             turns_taken: Mapping[str, int]) -> Iterator[QueuedJob]:
    """The jobs of `lanes` ((priority, namespace) -> its waiting jobs, FIFO, none empty) in queue order.

    The order is that of the key (-priority, turns taken + FIFO index in its lane, the lane's
    oldest job, namespace). It is built round by round instead of by sorting every job on that
    key: within a priority, round r takes, lane after lane (lanes go by their oldest job, then
    namespace), the job at FIFO index r - turns taken, if the lane has one. Between two rounds
    where a lane starts or runs out the same lanes take part in every round, so those rounds are
    the lanes' slices zipped together; only the lanes are sorted, and it is lazy: a pass that
    runs out of free nodes after a few jobs takes no more than those.
    """
    levels: dict[int, list[_Lane]] = defaultdict(list)
    for (priority, namespace), lane in lanes.items():
        levels[priority].append(_Lane(fifo_key(lane[0]), namespace, turns_taken.get(namespace, 0), lane))
    for priority in sorted(levels, reverse=True):
        ranked = sorted(levels[priority], key=lambda lane: (lane.head, lane.namespace))
        bounds = sorted({lane.turns for lane in ranked} | {lane.turns + len(lane.jobs) for lane in ranked})
        for start, end in itertools.pairwise(bounds):
            slices = [lane.jobs[start - lane.turns:end - lane.turns] for lane in ranked
                      if lane.turns <= start and end <= lane.turns + len(lane.jobs)]
            yield from itertools.chain.from_iterable(zip(*slices, strict=True))


def turns_by_namespace(namespaces: Iterable[str]) -> dict[str, int]:
    """Count active trainer pods per namespace (empty namespaces ignored)."""
    counts = Counter(namespaces)  # counted in C: a pass counts 1000 pods
    counts.pop("", None)
    counts.pop(None, None)
    return dict(counts)

"""The waiting jobs kept between scheduling passes, grouped the way a pass reads them.

A pass over a long queue with a few free nodes needs only the head of the queue order, how
many eligible jobs of each placement wait (for the free pool's demand, `fit.FreePool`), and the
jobs in backoff; the positions of the rest are needed only when the position writer reads them.
`WaitingQueue` keeps the lanes of `order.in_turns` sorted and those counts up to date as jobs
come and go (each change O(log n) plus a list insertion), so a pass costs what it admits plus
the lanes, placements and backoffs, not a sort of every waiting job. `schedule` builds one from
a snapshot; the operator keeps one (`job_index.JobIndex.waiting`).
"""

from __future__ import annotations

import bisect
import operator
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import datetime

from .model import Placement, QueuedJob
from .order import fifo_key, in_turns

_uid = operator.attrgetter("uid")
Lane = tuple[int, str]
"""(priority, namespace): one lane of the queue order."""


class WaitingQueue:
    """Waiting jobs by uid, with their lanes FIFO-sorted, their counts by namespace and placement,
    and the jobs with a backoff time. Not thread-safe: one thread changes and reads it."""

    def __init__(self, jobs: Iterable[QueuedJob] = ()):
        """`jobs`: the first of each uid counts (a snapshot may list a job twice)."""
        self._jobs: dict[str, QueuedJob] = {}
        for job in jobs:
            self._jobs.setdefault(job.uid, job)
        self._lanes: dict[Lane, list[QueuedJob]] = {}
        self._by_placement: dict[Placement, dict[str, QueuedJob]] = {}
        self._counts: Counter[tuple[str, Placement]] = Counter()
        self._backoff: dict[str, QueuedJob] = {}
        for job in self._jobs.values():
            self._lanes.setdefault((job.priority, job.namespace), []).append(job)
            self._index(job)
        for lane in self._lanes.values():
            lane.sort(key=fifo_key)

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, uid: object) -> bool:
        return uid in self._jobs

    def among(self, uids: set[str]) -> set[str]:
        """Those of `uids` that wait here."""
        return uids & self._jobs.keys()

    def get(self, uid: str) -> QueuedJob | None:
        return self._jobs.get(uid)

    def update(self, uid: str, job: QueuedJob | None) -> None:
        """The job's scheduling view now: None when it no longer waits."""
        old = self._jobs.get(uid)
        if old is not None:
            if old == job:
                return
            self._remove(old)
        if job is not None:
            self._jobs[uid] = job
            bisect.insort(self._lanes.setdefault((job.priority, job.namespace), []), job, key=fifo_key)
            self._index(job)

    def _index(self, job: QueuedJob) -> None:
        self._by_placement.setdefault(job.placement, {})[job.uid] = job
        self._counts[job.namespace, job.placement] += 1
        if job.not_before is not None:
            self._backoff[job.uid] = job

    def _remove(self, job: QueuedJob) -> None:
        del self._jobs[job.uid]
        key = (job.priority, job.namespace)
        lane = self._lanes[key]
        del lane[bisect.bisect_left(lane, fifo_key(job), key=fifo_key)]
        if not lane:
            del self._lanes[key]
        same = self._by_placement[job.placement]
        del same[job.uid]
        if not same:
            del self._by_placement[job.placement]
        self._counts[job.namespace, job.placement] -= 1
        if not self._counts[job.namespace, job.placement]:
            del self._counts[job.namespace, job.placement]
        self._backoff.pop(job.uid, None)

    def by_placement(self) -> Mapping[Placement, Mapping[str, QueuedJob]]:
        """The waiting jobs grouped by placement (do not change it)."""
        return self._by_placement

    def view(self, leaving: Collection[str] = ()) -> QueueView:
        """The lanes as they are now, without the jobs `leaving` (those with an active pod).

        A copy of each lane's list (a pointer copy), so the view stays as it was when a later
        change to the queue comes: a pass's positions are read from it on another thread."""
        dropped: dict[Lane, set[str]] = {}
        for uid in leaving:
            job = self._jobs.get(uid)
            if job is not None:
                dropped.setdefault((job.priority, job.namespace), set()).add(uid)
        lanes = {}
        for key, lane in self._lanes.items():
            gone = dropped.get(key)
            jobs = [job for job in lane if job.uid not in gone] if gone else list(lane)
            if jobs:
                lanes[key] = jobs
        return QueueView(lanes)

    def eligible_by_placement(self, now: datetime, leaving: Collection[str],
                              passed_over: Callable[[str], bool] | None = None) -> Counter[Placement]:
        """The jobs a pass could admit at `now`, counted by placement: not `leaving`, not in
        backoff, not of a namespace `passed_over` (at its node limit). Zero counts left out."""
        skip = passed_over or (lambda namespace: False)
        counts: Counter[Placement] = Counter()
        for (namespace, placement), count in self._counts.items():
            if not skip(namespace):
                counts[placement] += count
        for job in self._not_counted(now, leaving):
            if not skip(job.namespace):
                counts[job.placement] -= 1
        return +counts

    def _not_counted(self, now: datetime, leaving: Collection[str]) -> Iterator[QueuedJob]:
        for uid in leaving:
            if uid in self._jobs:
                yield self._jobs[uid]
        for uid, job in self._backoff.items():
            if job.not_before > now and uid not in leaving:
                yield job

    def next_wakeup(self, now: datetime, leaving: Collection[str]) -> datetime | None:
        """The earliest not_before after `now` of a job not `leaving`: when a pass may admit more."""
        return min((job.not_before for uid, job in self._backoff.items()
                    if job.not_before > now and uid not in leaving), default=None)


class QueueView:
    """The lanes of a queue at one moment (`WaitingQueue.view`)."""

    def __init__(self, lanes: Mapping[Lane, list[QueuedJob]]):
        self.lanes = lanes

    def ordered(self, turns_taken: Mapping[str, int]) -> Iterator[QueuedJob]:
        """The jobs in queue order (`order.in_turns`), lazily."""
        return in_turns(self.lanes, turns_taken)


class QueuePositions(Mapping[str, int]):
    """1-based queue positions of the jobs of a view that a pass left waiting, worked out when
    first read: only the position writer reads them, at its own pace, not every pass."""

    def __init__(self, view: QueueView, turns_taken: Mapping[str, int], admitted: Collection[str]):
        self._view, self._turns, self._admitted = view, turns_taken, admitted
        self._positions: dict[str, int] | None = None

    def as_dict(self) -> dict[str, int]:
        """The positions as a plain dict (worked out on the first call)."""
        if self._positions is None:
            left = list(map(_uid, self._view.ordered(self._turns)))
            if self._admitted:
                left = [uid for uid in left if uid not in self._admitted]
            self._positions = dict(zip(left, range(1, len(left) + 1), strict=True))
        return self._positions

    _all = as_dict

    def __getitem__(self, uid: str) -> int:
        return self._all()[uid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"QueuePositions({self._all()!r})"

"""queuePosition writes, apart from the scheduling pass and within a budget.

Every admission moves every waiting job up by one: keeping 5000 positions exact would cost
5000 status writes per admission, each one a watch event for every client. Positions are a
courtesy to the user, so they are written by a background task after each pass, a bounded
number per second, head of the queue first, and far down the queue only when they moved by a
tenth or more. The scheduling pass never waits for them.

The same writer, in the same budget, writes `status.queue.estimatedStartTime`: the controller
plays the queue forward every `ESTIMATE_SECONDS` at most (`start_estimates`), and a stored estimate
is rewritten only when it moved by more than `ESTIMATE_SLACK_SECONDS`, so an admission that moves
5000 estimates by seconds writes none of them. A job due both gets one patch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .k8s import Conflict, Kube
from .scheduling import QueuePositions
from .status_transitions import rfc3339
from .status_writer import StatusWriter
from .views import QueueEntry, parse_time

log = logging.getLogger(__name__)

EXACT_HEAD = 10
"""Positions up to this one are kept exact; further down only moves of >= 10% are written."""
WRITES_PER_SECOND = 10.0
"""Every status write of a LoraTrainingJob costs the API server a full decode, validation and
managedFields update of a large object: positions get a small share of what it can take."""
BURST = 50
"""At most this many writes at once (e.g. after many jobs were queued together)."""
ESTIMATE_SLACK_SECONDS = 60.0
"""A stored estimated start within this of the new one is left alone: estimates are minutes-scale
guesses, and every running job's ETA drifts them by seconds on each progress report."""
LAST_PLACE = 1 << 62
"""Sort key of a job whose position is not due (its estimate is): after every due position."""


def worth_writing(stored: int | None, wanted: int) -> bool:
    """Whether a job showing `stored` should be patched to `wanted`."""
    if stored == wanted:
        return False
    if stored is None or wanted <= EXACT_HEAD:
        return True
    return abs(stored - wanted) * 10 >= stored


def estimate_worth_writing(stored: str | None, wanted: datetime | None) -> bool:
    """Whether a job storing estimate `stored` (RFC 3339) should be patched to `wanted`
    (None: no estimate, so a stored one is removed)."""
    if wanted is None:
        return stored is not None
    before = parse_time(stored)
    return before is None or abs((wanted - before).total_seconds()) > ESTIMATE_SLACK_SECONDS


@dataclass
class PositionWriter:
    """Writes the latest plan's positions with a token bucket (WRITES_PER_SECOND, BURST)."""

    kube: Kube
    claiming: Callable[[str], bool] = lambda uid: False
    """Whether a pass is claiming the job (`Reservations.claiming`): such a job is not written, so a
    claim conflicts with at most the one position write that was already on its way."""
    rate: float = WRITES_PER_SECOND
    burst: int = BURST
    statuses: StatusWriter | None = None
    """Writes the positions. Default: one over `kube`."""
    wanted: Mapping[str, int] = field(default_factory=dict)
    """The latest pass's positions (`scheduling.QueuePositions`: worked out on first read, here)."""
    estimates: dict[str, datetime | None] = field(default_factory=dict)
    """The latest estimated starts by uid of the queued jobs (None: no estimate); jobs missing
    here are left as they are (no estimate computed yet)."""
    any_due: bool = False
    """Whether some job was due at the last `write` (before it wrote): more rounds are wanted while so."""
    _tokens: float = float(BURST)
    _refilled: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.statuses is None:
            self.statuses = StatusWriter(self.kube)

    def due(self, entries: Iterable[QueueEntry]) -> list[tuple[int, str]]:
        """(position, uid) of the waiting jobs whose stored position or estimate is worth updating,
        head first (a job due for its estimate alone sorts by its position, or last)."""
        positions = self._wanted()
        changed = [(key, entry.uid) for entry in entries
                   if (key := self._due_key(entry, positions.get(entry.uid))) is not None]
        changed.sort()
        return changed

    def due_in_order(self, entries: Mapping[str, QueueEntry]) -> Iterator[tuple[int, str]]:
        """`due(entries.values())`, lazily: a round that has tokens for a few writes stops after the
        first few due jobs instead of checking all of them (in a long drain most are due)."""
        positions = self._wanted()
        ordered = positions.items() if isinstance(self.wanted, QueuePositions) else sorted(
            positions.items(), key=lambda item: (item[1], item[0]))  # a pass's positions come in order
        for uid, wanted in ordered:
            entry = entries.get(uid)
            if entry is not None and (key := self._due_key(entry, wanted)) is not None:
                yield key, uid
        for uid in sorted(uid for uid, entry in entries.items()
                          if uid not in positions and self._due_key(entry, None) is not None):
            yield LAST_PLACE, uid

    def _due_key(self, entry: QueueEntry, wanted: int | None) -> int | None:
        """Where a job sorts among the due ones (`due`); None when it is not due."""
        if entry.queued is None:
            return None
        if wanted is not None and worth_writing(entry.queue_position, wanted):
            return wanted
        if self._estimate_due(entry):
            return LAST_PLACE if wanted is None else wanted
        return None

    def _wanted(self) -> Mapping[str, int]:
        """`wanted` as a plain dict where it is a pass's lazy positions (read here once per job)."""
        wanted = self.wanted
        return wanted.as_dict() if isinstance(wanted, QueuePositions) else wanted

    def _estimate_due(self, entry: QueueEntry) -> bool:
        return entry.uid in self.estimates and estimate_worth_writing(entry.estimated_start,
                                                                      self.estimates[entry.uid])

    def fields(self, entry: QueueEntry) -> dict[str, Any]:
        """The status fields of `entry` worth writing now."""
        fields: dict[str, Any] = {}
        wanted = self._wanted().get(entry.uid)
        if wanted is not None and worth_writing(entry.queue_position, wanted):
            fields["queuePosition"] = wanted
        if self._estimate_due(entry):
            start = self.estimates[entry.uid]
            fields["queue"] = {"estimatedStartTime": None if start is None else rfc3339(start)}
        return fields

    def write(self, entries: Mapping[str, QueueEntry]) -> int:
        """Spends the tokens available now on the most important changes; returns the writes made."""
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        written = 0
        self.any_due = False
        for _, uid in self.due_in_order(entries):
            self.any_due = True
            if self._tokens < 1:
                break
            job = entries[uid].queued
            if self.claiming(uid):
                continue
            # Read again for each write: a round's writes take round trips, and meanwhile the next
            # pass replaces `wanted`. A job it admitted has no position any more; an empty patch,
            # conditional on the version before its claim, was a 409 (bench/RESULTS.md, issue 17).
            fields = self.fields(entries[uid])
            if not fields:
                continue
            self._tokens -= 1
            try:
                self.statuses.queue_place(job.namespace, job.name, fields, entries[uid].resource_version)
                written += 1
            except Conflict:
                continue  # the job changed; the next round sees its new state
        return written

    def seconds_until_token(self) -> float:
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

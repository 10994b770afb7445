"""Read-your-own-writes for job bodies: what this process last wrote, until the watch shows it.

The operator reads jobs from kopf's index, which the watch stream fills. After a status write
the index holds the old body until the event comes back, a few milliseconds when idle, seconds
under load. A reconcile in between (the trainer pod went Running right after the claim) would
decide on the old body and write conditional on its resourceVersion: a 409, a sleep and another
try. Under load that was the commonest request of the operator: in a 1000-job run, 3444 status
writes got a 409 beside 3452 that succeeded (3143 of the 409s from this). This memory answers
with the body the API server returned instead (336 409s left, from queue positions and claims).

It never weakens a guard: writes stay conditional on the resourceVersion read, and the body
returned is exactly what the API server holds at that version.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .views import slim_job

LIMIT = 2048
"""Bodies kept at most; the watch normally retires each within a second."""


def _rv(body: Mapping[str, Any] | None) -> str | None:
    return (body or {}).get("metadata", {}).get("resourceVersion")


@dataclass
class OwnWrites:
    """uid -> (versions this process's writes replaced, the body the last write returned)."""

    _bodies: dict[str, tuple[frozenset[str], dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wrote(self, base_version: str, body: Mapping[str, Any]) -> None:
        """Records a successful write made conditional on `base_version`; `body` is its response."""
        uid = body["metadata"]["uid"]
        # Slimmed before the lock is taken: under load a thread can lose the GIL mid-copy, and every
        # reader and writer of every job (16 claim threads, the pass) waited on the lock meanwhile.
        slim = slim_job(body)
        with self._lock:
            replaced = {base_version}
            known = self._bodies.get(uid)
            if known is not None and _rv(known[1]) == base_version:
                replaced |= known[0]  # a chain of writes ahead of the watch
            if len(self._bodies) >= LIMIT:
                self._bodies.pop(next(iter(self._bodies)))
            self._bodies[uid] = (frozenset(replaced), slim)

    def latest(self, uid: str, indexed: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The indexed body, or the one this process wrote over it when the watch is behind."""
        if uid not in self._bodies:  # most jobs (a pass reads thousands): no lock needed to see that
            return indexed
        with self._lock:
            known = self._bodies.get(uid)
            if known is None:
                return indexed
            replaced, body = known
            if indexed is not None and _rv(indexed) in replaced:
                return body
            # The watch caught up, or someone else wrote since (or the job is gone): the index wins.
            del self._bodies[uid]
            return indexed

    def slimmed(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`body` (a watch event's) as the index keeps it (`slim_job`). The watch's echo of this
        process's own write is the very version that write returned, already slimmed here: that
        copy is shared rather than made again (most job events of a drain are such echoes, and
        slimming re-encodes the resolved spec: about 1.3 % of the operator's CPU, bench/RESULTS.md)."""
        meta = body["metadata"]
        known = self._bodies.get(meta["uid"])  # one dict read: safe without the lock
        if known is not None and _rv(known[1]) == meta.get("resourceVersion"):
            return known[1]
        return slim_job(body)

    def uids(self) -> list[str]:
        """The jobs with a write of this process that the watch may not have shown yet."""
        return list(self._bodies)

    def __len__(self) -> int:
        return len(self._bodies)

"""queuePosition of the jobs Kueue holds, read from Kueue's visibility API.

Kueue orders its pending Workloads itself; its manager serves that order as an aggregated API
(``visibility.kueue.x-k8s.io``, on by default since Kueue v0.9). Once per round, and once per
LocalQueue that holds waiting jobs (not once per job), the operator reads the LocalQueue's
``pendingworkloads`` and keeps each Workload's place by its Job's name. A job's reconcile
(`KueueAttempts.wait_for_kueue`) writes the place as queuePosition through the status writer,
with a note in the message that the position is Kueue's; the round asks for the reconciles of
the jobs whose stored position is worth updating (`positions.worth_writing`), head first and a
bounded number per round, as the built-in queue's positions are paced.

Where the API is missing (Kueue without it, an APIService not registered: 404; its server not
answering: 503; the chart's RBAC without it: 403) the operator says so once in its log, Kueue's
jobs carry no queuePosition, and it asks again every `ABSENT_RETRY_SECONDS`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .k8s import Kube
from .k8s_kueue import Unavailable
from .kueue import KueuePlace
from .positions import BURST, worth_writing
from .render import pod_name
from .views import QueueEntry

log = logging.getLogger(__name__)

VERSIONS = ("v1beta2", "v1beta1")
"""The visibility API's versions, preferred first: Kueue v0.19 serves both, older releases v1beta1."""
ROUND_SECONDS = 5.0
"""The LocalQueues are read at most this often (Kueue admits in seconds, not milliseconds)."""
ABSENT_RETRY_SECONDS = 60.0
"""After the API was found missing, it is asked for again this much later (a 503 may be Kueue's
manager restarting; a 404 or 403 lasts until someone installs or grants it)."""
LIMIT = 1000
"""Pending Workloads read per LocalQueue (Kueue's default page): jobs further back get no position."""


def pending_places(summary: Mapping[str, Any]) -> dict[str, KueuePlace]:
    """The places of a PendingWorkloadsSummary's Workloads by the name of the Job that owns each.

    Workloads without a Job owner (not the operator's) are left out.
    """
    places = {}
    for item in summary.get("items") or []:
        owner = next((o for o in (item.get("metadata") or {}).get("ownerReferences") or []
                      if o.get("kind") == "Job" and o.get("apiVersion", "batch/v1") == "batch/v1"), None)
        if owner is not None:
            places[owner["name"]] = KueuePlace(int(item.get("positionInClusterQueue", 0)) + 1,
                                               int(item.get("positionInLocalQueue", 0)) + 1,
                                               item.get("localQueueName", ""))
    return places


@dataclass
class KueuePositions:
    """The latest places read from Kueue's visibility API, and the rounds that read them."""

    kube: Kube
    round_seconds: float = ROUND_SECONDS
    places: dict[tuple[str, str], KueuePlace] = field(default_factory=dict)
    """(namespace, Job name) -> place, from the last round."""
    version: str = VERSIONS[0]
    """The version that answered last."""
    absent: str | None = None
    """Why the API was missing at the last try (None: it answered)."""
    _read_at: float = -math.inf
    _retry_at: float = -math.inf

    def place(self, namespace: str, batch_job: str) -> KueuePlace | None:
        """The place of the Workload of Job `batch_job`, as the last round read it."""
        return self.places.get((namespace, batch_job))

    def refresh(self, entries: Mapping[str, QueueEntry], now: float | None = None) -> list[str]:
        """One round, if one is due: reads the LocalQueues of the jobs Kueue holds.

        Returns:
            The uids of the jobs whose stored queuePosition is worth updating, head first, at most
            `positions.BURST`: the caller asks for their reconciles.
        """
        now = time.monotonic() if now is None else now
        if now - self._read_at < self.round_seconds:
            return []
        self._read_at = now
        waits = {uid: e.kueue_wait for uid, e in entries.items() if e.kueue_wait is not None}
        places: dict[tuple[str, str], KueuePlace] = {}
        if now >= self._retry_at:
            for namespace, queue in sorted({(w.namespace, w.queue) for w in waits.values()}):
                found = self._read(namespace, queue, now)
                if found is None:
                    break
                places.update({(namespace, name): place for name, place in found.items()})
        self.places = places
        due = []
        for uid, wait in waits.items():
            place = places.get((wait.namespace, pod_name(wait.name, wait.attempt)))
            stored = entries[uid].queue_position
            if place is None and stored is not None:
                due.append((0, uid))
            elif place is not None and worth_writing(stored, place.position):
                due.append((place.position, uid))
        return [uid for _, uid in sorted(due)[:BURST]]

    def _read(self, namespace: str, queue: str, now: float) -> dict[str, KueuePlace] | None:
        """The places in one LocalQueue ({} when Kueue knows no such queue); None when the API is
        missing in every version (logged once, asked again after `ABSENT_RETRY_SECONDS`)."""
        errors = []
        for version in dict.fromkeys((self.version, *VERSIONS)):
            try:
                summary = self.kube.kueue_pending_workloads(namespace, queue, version, LIMIT)
            except Unavailable as err:
                errors.append(f"{version}: {err}")
                continue
            if self.absent is not None:
                log.info("Kueue's visibility API answers again (%s): Kueue's jobs get queuePosition", version)
            self.version, self.absent = version, None
            return pending_places(summary) if summary is not None else {}
        if self.absent is None:
            log.warning("Kueue's visibility API is not available (%s): Kueue's jobs get no queuePosition; "
                        "asking again every %.0f s", "; ".join(errors), ABSENT_RETRY_SECONDS)
        self.absent = "; ".join(errors)
        self._retry_at = now + ABSENT_RETRY_SECONDS
        return None

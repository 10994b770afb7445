"""The nodes this process has handed out that the watch does not show as taken yet.

A pass reserves each node it admits a job to before the job's claim is sent: the pod the claim is
for holds the node (`held`) until the watch shows that pod (`pod_seen`), the claim fails and gives
it back (`release`), or the entry expires. The next pass counts these pods among the trainer pods,
so it cannot hand the same node out again while the claim and the pod creation are in flight."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .render import pod_name
from .scheduling import Admission, TrainerPod
from .views import JobView

RECENT_SECONDS = 60.0
"""How long a pod this replica is claiming or just created counts as holding its node before the watch shows it."""


@dataclass
class Reservations:
    """node -> the pod being claimed or created on it, until the watch shows that pod."""

    recent: dict[str, tuple[tuple[str, str], str, float]] = field(default_factory=dict)
    """node -> ((namespace, pod name), job uid, expiry on the monotonic clock) of the pods this
    process is claiming a job for or has created, until the watch shows them."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    """`recent` changes in the pass's threads and on the event loop (`pod_seen`)."""

    def held(self) -> list[TrainerPod]:
        """The pods this process created that the watch has not shown yet; each holds its node.

        Take it before reading the pods index: an entry leaves when the watch shows its pod
        (`pod_seen`), after kopf put the pod in the index, so in this order every such pod is in
        one or the other (the other order could miss a pod that appeared in between).
        """
        now = time.monotonic()
        with self._lock:
            self.recent = {n: v for n, v in self.recent.items() if v[2] > now}
            return [TrainerPod(name=name, node=n, job_uid=uid, active=True, namespace=namespace)
                    for n, ((namespace, name), uid, _) in self.recent.items()]

    def claiming(self, uid: str) -> bool:
        """Whether a pass of this process has reserved a node for the job (its claim may be in flight)."""
        with self._lock:
            return any(job_uid == uid for _, job_uid, _ in self.recent.values())

    def pod_seen(self, namespace: str, name: str) -> None:
        """The watch showed this pod, in any phase: it no longer holds its node through `held`.

        Called on every trainer pod event, not from a pass: a pod that ran and ended while a long
        pass ran (or between two passes) must free its node then, not when its entry expires.
        """
        with self._lock:
            for node, (key, _, _) in list(self.recent.items()):
                if key == (namespace, name):
                    del self.recent[node]

    def reserve(self, candidates: list[tuple[JobView, Admission]]) -> None:
        """Marks each candidate's node as held by the pod its claim is for, before the claim is sent."""
        expiry = time.monotonic() + RECENT_SECONDS
        with self._lock:
            for job, admission in candidates:
                key = (job.namespace, pod_name(job.name, job.status.attempt + 1))
                self.recent[admission.node] = (key, job.uid, expiry)

    def release(self, job: JobView, node: str) -> None:
        """Gives the node back if the job still holds it (its claim failed or its pod was refused)."""
        with self._lock:
            if node in self.recent and self.recent[node][1] == job.uid:
                del self.recent[node]

"""Checks that passed a moment ago, so a burst of jobs on the same Secret and dataset makes one
API read and one storage listing, not one per job.

Only passes are remembered: a Secret created or a dataset uploaded just after a job failed the
check is seen by the next job at once. A Secret deleted or a dataset emptied within the window
is not: the job queues, and its trainer pod fails with its own clear error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

CONFIRMED_SECONDS = 30.0
LIMIT = 10_000


class Confirmed:
    """Keys confirmed within the last `seconds` (thread-safe)."""

    def __init__(self, seconds: float = CONFIRMED_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self._until: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return self._until.get(key, 0.0) > self.clock()

    def add(self, key: Hashable) -> None:
        now = self.clock()
        with self._lock:
            if len(self._until) >= LIMIT:
                self._until = {k: t for k, t in self._until.items() if t > now}
            self._until[key] = now + self.seconds

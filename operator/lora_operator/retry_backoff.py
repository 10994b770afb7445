"""When each unresolved job is due for another try: the follow loop retries a job whose checks
met an API or storage error on that job's own backoff, not in a fixed window of the oldest."""

from __future__ import annotations

from collections.abc import Iterable

RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
"""Backoff of an unresolved job whose checks met an API or storage error: doubles per failure."""


class RetryBackoff:
    """When each unresolved job is due for another try: its own backoff, doubling per failure,
    so a job that keeps failing does not crowd out one that failed once."""

    def __init__(self, first: float = RETRY_FIRST_SECONDS, most: float = RETRY_MAX_SECONDS):
        self.first, self.most = first, most
        self._due: dict[str, tuple[float, float]] = {}
        """uid -> (due on the monotonic clock, the delay that set it)."""

    def failed(self, uid: str, now: float) -> float:
        """Records a failed try; returns the delay until the next one."""
        _, last = self._due.get(uid, (0.0, 0.0))
        delay = min(self.most, last * 2) if last else self.first
        self._due[uid] = (now + delay, delay)
        return delay

    def tried(self, uid: str, now: float) -> None:
        """A retry starts: the job waits out its current delay again before the next (a try that
        fails doubles it through `failed`)."""
        _, last = self._due.get(uid, (0.0, self.first))
        self._due[uid] = (now + last, last)

    def passed(self, uid: str) -> None:
        self._due.pop(uid, None)

    def due(self, uid: str) -> float | None:
        """When the job's next try is due; None when no try of it failed."""
        entry = self._due.get(uid)
        return entry[0] if entry else None

    def forget(self, keep: Iterable[str]) -> None:
        keep = set(keep)
        for uid in [u for u in self._due if u not in keep]:
            del self._due[uid]

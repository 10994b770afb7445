"""The queue of jobs waiting for a reconcile: each job once, however many events asked for it.
The watch handlers put a job here and return at once (why: see `handlers`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class WorkQueue:
    """Job uids waiting for a reconcile, deduplicated; `run` works them off."""

    def __init__(self, on_error: Callable[[], None] = lambda: None):
        self.on_error = on_error
        """Called when a reconcile raised (the controller counts it)."""
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._waiting: set[str] = set()
        """Jobs in `_queue`, each once."""

    def put(self, uid: str) -> None:
        """Asks for a reconcile of the job; a job already waiting is not added twice (the
        reconcile reads its latest body when it runs)."""
        if uid not in self._waiting:
            self._waiting.add(uid)
            self._queue.put_nowait(uid)

    async def run(self, reconcile: Callable[[str], Awaitable[None]], count: int) -> None:
        """Reconciles the queued jobs, `count` at a time, until cancelled."""
        async def work() -> None:
            while True:
                uid = await self._queue.get()
                self._waiting.discard(uid)  # an event from now on queues it again
                try:
                    await reconcile(uid)
                except Exception:  # noqa: BLE001 - one job's failure must not stop the others
                    log.exception("reconciling job %s failed", uid)
                    self.on_error()

        await asyncio.gather(*(work() for _ in range(count)))

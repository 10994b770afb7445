"""When the operator's job index is complete enough for a first scheduling pass: it holds every
job the API server listed once the job watch had begun.

Admission is a decision over all waiting jobs at once. A pass over half a relist would admit a
younger job before an older one the watch has not delivered yet, and the relist comes in pages
(`LORA_LIST_CHUNK`), in name order, not age. kopf's own answer, an index gate, is what the
operator no longer uses for jobs (why: see `handlers`), so the scheduling loop waits here once:

1. for the first job event: kopf's job watch is running (a standby's watch is paused until it
   takes over, and its loop waits here until then; with no job at all there is nothing to pass over);
2. then it lists the uids of the jobs once (metadata only), and waits until the watch has shown
   each of them, as an event of the listing, a later ADDED, or DELETED. A job that left without
   an event reaching the handler (deleted while kopf relisted after a watch expired) is dropped by
   listing again while some are outstanding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

RELIST_SECONDS = 10.0
"""While listed jobs are still unseen, they are listed again this often (jobs that left unseen)."""
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0)
"""Waits between failed listings (the last repeats)."""


class StartupListing:
    """Listed job uids the watch has not shown yet; `wait` returns once none is left."""

    def __init__(self, list_uids: Callable[[], set[str]]):
        self._list_uids = list_uids
        """Blocking: the uids of every job the operator watches (the Kubernetes adapter's list)."""
        self._watching = asyncio.Event()
        self._complete = asyncio.Event()
        self._seen: set[str] | None = set()
        """uids the watch showed before the listing returned (None once complete: no memory kept)."""
        self._pending: set[str] | None = None
        """Listed uids the watch has not shown yet (None: not listed yet)."""

    @property
    def complete(self) -> bool:
        return self._complete.is_set()

    def saw(self, uid: str) -> None:
        """A job event of the watch (any type, the listing's included), in the event loop."""
        if self._seen is None:
            return
        self._watching.set()
        self._seen.add(uid)
        if self._pending is not None:
            self._pending.discard(uid)
            if not self._pending:
                self._done()

    async def wait(self) -> None:
        """Returns once every job listed after the job watch began was seen (at once when complete)."""
        await self._watching.wait()
        while not self.complete:
            listed = await self._list()
            assert self._seen is not None  # only `_done` clears it, and that sets complete
            if self._pending is None:
                self._pending = listed - self._seen
                log.info("job index: %d jobs listed, %d not shown by the watch yet", len(listed), len(self._pending))
            else:
                self._pending &= listed  # the ones still outstanding that exist at all
            if not self._pending:
                self._done()
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._complete.wait(), RELIST_SECONDS)

    async def _list(self) -> set[str]:
        failures = 0
        while True:
            try:
                return await asyncio.to_thread(self._list_uids)
            except Exception as err:  # noqa: BLE001 - the API server may be away; scheduling waits for it
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.warning("listing the jobs for the first scheduling pass failed (%s); again in %.0f s", err, delay)
                await asyncio.sleep(delay)

    def _done(self) -> None:
        self._seen = None
        self._pending = set()
        self._complete.set()
        log.info("job index complete: scheduling starts")


"""The first scheduling pass waits for a complete job index (`startup_listing`): the jobs are the
job handler's own index, not kopf's, so kopf's gate no longer says when all of them are there.

The listing function stands in for the Kubernetes adapter's metadata list (the real one runs in
tests/cluster/test_operator_startup.py); what is tested is when `wait` returns."""

from __future__ import annotations

import asyncio

import kopf

from lora_operator import handlers, startup_listing
from lora_operator.api import GROUP, LoraTrainingJob
from lora_operator.startup_listing import StartupListing


class Lister:
    """Answers with `uids` (changeable between calls); counts the calls; can fail first."""

    def __init__(self, uids: set[str], failures: int = 0):
        self.uids = set(uids)
        self.calls = 0
        self.failures = failures

    def __call__(self) -> set[str]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the API server is away")
        return set(self.uids)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


def test_no_listing_before_the_first_job_event_then_every_listed_job_must_be_seen():
    async def scenario():
        lister = Lister({"a", "b", "c"})
        listing = StartupListing(lister)
        waiting = asyncio.create_task(listing.wait())
        await settle()
        assert lister.calls == 0 and not waiting.done()  # a standby's watch is paused: nothing to list for
        listing.saw("b")  # the first page of the watch's own listing
        await settle()
        assert lister.calls == 1 and not waiting.done()  # a and c were listed, not shown yet
        listing.saw("a")
        await settle()
        assert not waiting.done()
        listing.saw("c")  # a DELETED event counts the same: the job was seen
        await asyncio.wait_for(waiting, 1)
        assert listing.complete
        await asyncio.wait_for(listing.wait(), 1)  # later waits return at once
        assert lister.calls == 1

    asyncio.run(scenario())


def test_a_listed_job_that_left_without_an_event_is_dropped_by_listing_again(monkeypatch):
    monkeypatch.setattr(startup_listing, "RELIST_SECONDS", 0.05)

    async def scenario():
        lister = Lister({"a", "gone"})
        listing = StartupListing(lister)
        waiting = asyncio.create_task(listing.wait())
        listing.saw("a")
        await settle()
        assert not waiting.done() and lister.calls >= 2  # still listed: still waited for
        lister.uids = {"a"}  # deleted while kopf relisted: no event will come
        await asyncio.wait_for(waiting, 1)

    asyncio.run(scenario())


def test_a_failed_listing_is_tried_again(monkeypatch):
    monkeypatch.setattr(startup_listing, "RETRY_SECONDS", (0.01,))

    async def scenario():
        lister = Lister({"a"}, failures=2)
        listing = StartupListing(lister)
        listing.saw("a")
        await asyncio.wait_for(listing.wait(), 1)
        assert lister.calls == 3

    asyncio.run(scenario())


def test_lora_training_jobs_are_no_kopf_index_and_pods_and_nodes_are():
    """kopf holds every handler until each object of each indexed resource is indexed, and stops
    holding only when a new object arrives while none is pending: with jobs arriving steadily it
    never stopped (bench/RESULTS.md, "10000 jobs / 1000 nodes"). Jobs are the handler's own index."""
    registry = kopf.get_default_registry()
    assert handlers.job_changed  # the module registered its handlers
    indexed = {(s.group, s.plural or s.any_name) for s in registry._indexing.get_all_selectors()}
    assert (GROUP, LoraTrainingJob.PLURAL) not in indexed
    assert indexed == {("", "pods"), ("", "nodes")}

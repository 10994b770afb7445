"""The controller's follow loop (progress, deadlines, TTLs) takes the place of a kopf timer per
job: each interval it reconciles, reading progress, exactly the jobs that need it."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter

from lora_operator.config import OperatorConfig
from lora_operator.controller import UNQUEUED_PER_TICK, Controller
from lora_operator.follow import Follower
from lora_operator.job_index import JobIndex
from lora_operator.metrics import OperatorMetrics
from lora_operator.own_writes import OwnWrites
from lora_operator.retry_backoff import RetryBackoff
from lora_operator.views import utcnow


class Kube:
    own_writes = OwnWrites()


def body(uid: str, phase: str, **spec) -> dict:
    return {"metadata": {"uid": uid, "name": uid, "namespace": "ns", "resourceVersion": "1"},
            "spec": spec, "status": {"phase": phase, "resolvedSpec": {}}}


def follow(jobs: dict[str, dict], seconds: float, failing: str = "") -> list[tuple[str, bool]]:
    """Runs the follow loop over `jobs` for `seconds`; the (uid, progress) of each reconcile."""
    controller = Controller(Kube(), OperatorConfig(progress_interval=0.01), OperatorMetrics(), lambda *a: None)
    controller.bind(dict(jobs), {}, {})
    seen: list[tuple[str, bool]] = []

    async def reconcile(uid: str, *, progress: bool = False) -> None:
        seen.append((uid, progress))
        if uid == failing:
            raise RuntimeError("storage down")

    controller.reconcile = reconcile  # type: ignore[method-assign]

    async def run_a_while():
        task = asyncio.create_task(controller.follow_loop())
        await asyncio.sleep(seconds)
        task.cancel()

    asyncio.run(run_a_while())
    return seen


def test_each_interval_reconciles_running_jobs_and_finished_ones_with_a_ttl_only():
    jobs = {"run": body("run", "Running"), "queued": body("queued", "Queued"),
            "ttl": body("ttl", "Succeeded", ttlSecondsAfterFinished=60), "done": body("done", "Succeeded")}
    seen = follow(jobs, 0.1, failing="ttl")  # one failing job does not stop the loop
    assert {uid for uid, _ in seen} == {"run", "ttl"}
    assert all(progress for _, progress in seen)
    assert seen.count(("run", True)) >= 2  # not once: every interval


def new_job(uid: str, created: str) -> dict:
    return {"metadata": {"uid": uid, "name": uid, "namespace": "ns", "resourceVersion": "1",
                         "creationTimestamp": created}, "spec": {}}


def test_a_job_still_without_a_resolved_spec_after_the_grace_is_reconciled_so_it_may_queue():
    # A new job is resolved on its first event; when that reconcile gave up (it kept conflicting,
    # the operator was busy failing over) the follow loop resolves it once it is older than the grace.
    just_now = utcnow().isoformat().replace("+00:00", "Z")
    jobs = {"stuck": new_job("stuck", "2026-01-01T00:00:00Z"), "fresh": new_job("fresh", just_now),
            "queued": body("queued", "Queued")}
    seen = follow(jobs, 0.05)
    assert {uid for uid, _ in seen} == {"stuck"}
    assert not any(progress for _, progress in seen)


def test_stuck_new_jobs_are_queued_a_few_at_a_time_each_in_turn():
    # During a submission burst kopf lags by thousands of jobs: reconciling them all at once stalled
    # the operator, so each tick takes at most UNQUEUED_PER_TICK. A job tried waits out its backoff
    # (RETRY_FIRST_SECONDS) before its next try: the next ticks take the others, not the same oldest again.
    jobs = {f"j{i}": new_job(f"j{i}", "2026-01-01T00:00:00Z") for i in range(3 * UNQUEUED_PER_TICK)}
    seen = follow(jobs, 0.2)  # far more than 3 ticks, far less than the backoff
    assert [uid for uid, _ in seen].count("j0") == 1
    assert sorted(uid for uid, _ in seen) == sorted(jobs)  # each once, all of them


def test_a_failed_job_is_finished_not_unresolved():
    # A job that failed before it was resolved (SecretNotFound, InvalidSpec) has nothing to retry.
    failed = new_job("failed", "2026-01-01T00:00:00Z") | {"status": {"phase": "Failed"}}
    seen = follow({"failed": failed, "stuck": new_job("stuck", "2026-01-01T00:00:00Z")}, 0.05)
    assert [uid for uid, _ in seen] == ["stuck"]


def test_a_new_job_that_met_an_error_is_retried_ahead_of_a_hundred_that_keep_failing():
    # 100 old unresolved jobs that keep failing back off further with each try; a newer job whose
    # first try failed once is due after the shortest backoff, so it is retried on the next due tick.
    controller = Controller(Kube(), OperatorConfig(progress_interval=0.01), OperatorMetrics(), lambda *a: None)
    jobs = {f"old{i}": new_job(f"old{i}", "2026-01-01T00:00:00Z") for i in range(100)}
    for i in range(100):
        for _ in range(4):  # 1, 2, 4, 8 s
            controller.retries.failed(f"old{i}", 0.0)
    controller.retries.failed("new", 0.0)
    jobs["new"] = new_job("new", utcnow().isoformat().replace("+00:00", "Z"))
    controller.bind(jobs, {}, {})
    now = utcnow()
    due = [uid for uid in jobs if controller._retry_due(uid, jobs[uid], now, 1.5) is not None]
    assert due == ["new"]
    assert controller._retry_due("old0", jobs["old0"], now, 8.5) is not None


def test_the_followed_jobs_are_spread_over_the_interval_a_few_at_a_time():
    # 1000 running jobs were 1000 reconciles at one instant every interval (a progress read each):
    # now each job has its own turn, the first turns spread over the interval, `workers` at once.
    now = [0.0]
    index = JobIndex(OwnWrites())
    index.jobs, index.pods, index.nodes = {f"r{i}": body(f"r{i}", "Running") for i in range(100)}, {}, {}
    started: list[tuple[float, str]] = []
    in_flight = [0, 0]  # now, most

    async def reconcile(uid: str, *, progress: bool = False) -> None:
        assert progress
        started.append((now[0], uid))
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        await asyncio.sleep(0)  # a storage read: the other workers go meanwhile
        in_flight[0] -= 1

    follower = Follower(index, RetryBackoff(), reconcile, interval=10.0, workers=2, clock=lambda: now[0])

    async def three_intervals() -> None:
        workers = [asyncio.create_task(follower.work()) for _ in range(2)]
        follower.scan()
        for second in range(30):  # a tick a second
            now[0] = float(second)
            follower.queue_due()
            await follower.settled()
        for worker in workers:
            worker.cancel()

    asyncio.run(three_intervals())
    per_tick = Counter(t for t, _ in started)
    assert {uid for t, uid in started if t <= 10} == set(index.jobs)  # each within the first interval
    assert max(per_tick.values()) <= 11  # about 100 jobs / 10 s, never the 100 at once
    assert in_flight[1] == 2  # two at a time, not one, not all
    turns = sorted(t for t, uid in started if uid == "r50")
    assert [b - a for a, b in itertools.pairwise(turns)] == [10.0, 10.0]  # each again an interval later


def test_a_turn_keeps_its_time_and_one_that_waited_longer_than_an_interval_moves_the_next():
    # A job is due an interval after it was due, however late in the tick it ran; when the loop
    # fell a whole interval behind, an interval after its reconcile began: it slows down, no catch-up burst.
    now = [0.0]
    index = JobIndex(OwnWrites())
    index.jobs, index.pods, index.nodes = {"r": body("r", "Running")}, {}, {}
    started: list[float] = []

    async def reconcile(uid: str, *, progress: bool = False) -> None:
        started.append(now[0])

    follower = Follower(index, RetryBackoff(), reconcile, interval=10.0, workers=1, clock=lambda: now[0])

    async def play() -> None:
        worker = asyncio.create_task(follower.work())
        follower.scan()  # due at 0
        for second in (4.0, 10.0, 35.0, 44.0, 45.0):
            now[0] = second
            follower.queue_due()
            await follower.settled()
        worker.cancel()

    asyncio.run(play())
    assert started == [4.0, 10.0, 35.0, 45.0]


def test_the_loop_spreads_a_round_of_follows_over_the_interval():
    # Through the controller: the first round of 40 running jobs spans most of the interval; before,
    # the 40 started within a millisecond.
    jobs = {f"r{i}": body(f"r{i}", "Running") for i in range(40)}
    controller = Controller(Kube(), OperatorConfig(progress_interval=0.4), OperatorMetrics(), lambda *a: None)
    controller.bind(jobs, {}, {})
    started: dict[str, list[float]] = {}

    async def reconcile(uid: str, *, progress: bool = False) -> None:
        started.setdefault(uid, []).append(time.monotonic())

    controller.reconcile = reconcile  # type: ignore[method-assign]

    async def run_a_while():
        task = asyncio.create_task(controller.follow_loop())
        await asyncio.sleep(1.5)
        task.cancel()

    asyncio.run(run_a_while())
    assert set(started) == set(jobs)
    first = [times[0] for times in started.values()]
    assert max(first) - min(first) >= 0.2  # half the interval at least (even: 39/40 of it)


def test_an_event_reconcile_does_not_wait_behind_the_follow_reconciles():
    # A pod ended: its job's Succeeded write (a reconcile worker's) must not queue behind the follow
    # loop's progress reads. Here 40 followed jobs' progress reads hang; the event's reconcile still runs.
    jobs = {f"r{i}": body(f"r{i}", "Running") for i in range(40)} | {"ended": body("ended", "Queued")}
    controller = Controller(Kube(), OperatorConfig(progress_interval=0.05), OperatorMetrics(), lambda *a: None)
    controller.bind(jobs, {}, {})
    release, reconciled = threading.Event(), threading.Event()
    hanging = [0]

    class Lifecycle:
        def reconcile(self, view, pods, now) -> None:
            if view.uid == "ended":
                reconciled.set()

        def sync_progress(self, view, now) -> None:
            hanging[0] += 1
            release.wait(30)  # a storage read that does not answer

    controller.lifecycle = Lifecycle()  # type: ignore[assignment]

    async def scenario() -> bool:
        follow = asyncio.create_task(controller.follow_loop())
        workers = asyncio.create_task(controller.reconcile_workers())
        try:
            for _ in range(1000):
                if hanging[0] >= 2:
                    break
                await asyncio.sleep(0.01)
            controller.enqueue("ended")
            for _ in range(500):
                if reconciled.is_set():
                    break
                await asyncio.sleep(0.01)
            return reconciled.is_set()
        finally:
            release.set()
            follow.cancel()
            workers.cancel()

    assert asyncio.run(scenario())
    assert hanging[0] >= 2

"""Kueue's queue positions: the visibility API's summary parsed into places, one read per LocalQueue
per round, the jobs worth a reconcile chosen head first, and a missing API logged once and asked
again later (its real answers, 404 without Kueue and a LocalQueue it does not know, are in
tests/cluster/kueue/test_positions.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from lora_operator.api.conditions import Phase
from lora_operator.k8s_kueue import Unavailable
from lora_operator.kueue import KueuePlace, workload_state
from lora_operator.kueue_positions import ABSENT_RETRY_SECONDS, KueuePositions, pending_places
from lora_operator.render import pod_name
from lora_operator.status_transitions import kueue_workload
from lora_operator.views import JobView, QueueEntry


def pending(namespace: str, queue: str, *jobs: str, cq_offset: int = 0) -> dict:
    """A PendingWorkloadsSummary as Kueue v0.19 serves it, the Workloads owned by Jobs `jobs` in order."""
    return {"kind": "PendingWorkloadsSummary", "apiVersion": "visibility.kueue.x-k8s.io/v1beta2",
            "metadata": {}, "items": [
                {"metadata": {"name": f"job-{job}-1a2b3", "namespace": namespace,
                              "creationTimestamp": "2026-12-06T12:00:00Z",
                              "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job,
                                                   "uid": f"uid-{job}"}]},
                 "priority": 0, "localQueueName": queue,
                 "positionInClusterQueue": i + cq_offset, "positionInLocalQueue": i}
                for i, job in enumerate(jobs)]}


def body(name: str, queue: str | None = "gpu", position: int | None = None, attempt: int = 0,
         phase: str = "Queued", **spec) -> dict:
    status = {"phase": phase, "attempt": attempt, "resolvedSpec": {"queueName": queue} if queue else {}}
    if position is not None:
        status["queuePosition"] = position
    return {"metadata": {"uid": f"uid-{name}", "name": name, "namespace": "ns", "resourceVersion": "1",
                         "creationTimestamp": "2026-12-06T12:00:00Z"}, "spec": spec, "status": status}


class VisibilityKube:
    """Answers `kueue_pending_workloads` from `summaries` by (namespace, queue), counting the calls;
    `unavailable` holds the versions that raise Unavailable."""

    def __init__(self, summaries: dict, unavailable: tuple[str, ...] = ()):
        self.summaries = summaries
        self.unavailable = set(unavailable)
        self.calls: list[tuple[str, str, str]] = []

    def kueue_pending_workloads(self, namespace, queue, version, limit):
        self.calls.append((namespace, queue, version))
        if version in self.unavailable:
            raise Unavailable(f"404 Not Found ({version})")
        return self.summaries.get((namespace, queue))


def entries(*bodies: dict) -> dict[str, QueueEntry]:
    return {b["metadata"]["uid"]: QueueEntry.of(b) for b in bodies}


def test_summary_parses_into_one_based_places_by_job_name():
    summary = pending("ns", "gpu", "a-1", "b-1", cq_offset=3)
    summary["items"].append({"metadata": {"name": "pod-wl", "ownerReferences": [
        {"apiVersion": "v1", "kind": "Pod", "name": "p"}]}, "positionInClusterQueue": 9,
        "positionInLocalQueue": 2, "localQueueName": "gpu"})
    assert pending_places(summary) == {"a-1": KueuePlace(4, 1, "gpu"), "b-1": KueuePlace(5, 2, "gpu")}
    assert pending_places({"items": None}) == {}


def test_only_queued_jobs_that_name_a_local_queue_wait_in_kueue():
    wait = QueueEntry.of(body("a", attempt=2)).kueue_wait
    assert (wait.namespace, wait.name, wait.queue, wait.attempt) == ("ns", "a", "gpu", 3)
    assert QueueEntry.of(body("b", queue=None)).kueue_wait is None
    assert QueueEntry.of(body("c", phase="Running")).kueue_wait is None
    assert QueueEntry.of(body("d", suspend=True)).kueue_wait is None


def test_one_read_per_local_queue_per_round_and_due_jobs_head_first():
    jobs = [body("a"), body("b"), body("c", queue="other"), body("d", position=1)]
    kube = VisibilityKube({("ns", "gpu"): pending("ns", "gpu", pod_name("b", 1), pod_name("a", 1), pod_name("d", 1)),
                           ("ns", "other"): pending("ns", "other", pod_name("c", 1), cq_offset=5)})
    reader = KueuePositions(kube)  # type: ignore[arg-type]
    assert reader.refresh(entries(*jobs), now=0.0) == ["uid-b", "uid-a", "uid-d", "uid-c"]
    assert sorted(kube.calls) == [("ns", "gpu", "v1beta2"), ("ns", "other", "v1beta2")]
    assert reader.place("ns", pod_name("d", 1)) == KueuePlace(3, 3, "gpu")
    assert reader.refresh(entries(*jobs), now=1.0) == []  # within the round: no read
    assert len(kube.calls) == 2
    stored = [body("a", position=2), body("b", position=1), body("c", queue="other", position=6), body("d", position=3)]
    assert reader.refresh(entries(*stored), now=10.0) == []  # all written: nothing due


def test_a_job_that_left_kueues_list_has_its_position_cleared():
    reader = KueuePositions(VisibilityKube({("ns", "gpu"): pending("ns", "gpu")}))  # type: ignore[arg-type]
    assert reader.refresh(entries(body("a", position=1), body("b")), now=0.0) == ["uid-a"]


def test_missing_api_is_logged_once_tried_in_each_version_and_asked_again_later(caplog):
    caplog.set_level(logging.INFO, "lora_operator.kueue_positions")
    kube = VisibilityKube({("ns", "gpu"): pending("ns", "gpu", pod_name("a", 1))},
                          unavailable=("v1beta2", "v1beta1"))
    reader = KueuePositions(kube, round_seconds=1.0)  # type: ignore[arg-type]
    jobs = entries(body("a", position=4))
    assert reader.refresh(jobs, now=0.0) == ["uid-a"]  # a stored position goes
    assert [c[2] for c in kube.calls] == ["v1beta2", "v1beta1"]
    assert reader.refresh(jobs, now=2.0) == ["uid-a"]
    assert len(kube.calls) == 2  # not asked again before the retry
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no queuePosition" in warnings[0].getMessage()
    kube.unavailable = {"v1beta2"}  # an older Kueue: v1beta1 only
    assert reader.refresh(jobs, now=ABSENT_RETRY_SECONDS + 1) == ["uid-a"]
    assert reader.place("ns", pod_name("a", 1)) == KueuePlace(1, 1, "gpu") and reader.version == "v1beta1"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_unknown_local_queue_gives_no_places_and_is_no_missing_api():
    reader = KueuePositions(VisibilityKube({}))  # type: ignore[arg-type]
    assert reader.refresh(entries(body("a")), now=0.0) == []
    assert reader.absent is None


@pytest.mark.parametrize("place", [KueuePlace(2, 1, "gpu"), None])
def test_kueue_place_is_the_queued_jobs_position_and_its_message_says_so(place):
    job = JobView.of(body("a"))
    workload = {"status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Pending",
                                           "message": "insufficient quota"}]}}
    status = kueue_workload(job.status, workload_state(workload), now=datetime.now(UTC), place=place)
    assert status.phase is Phase.QUEUED
    assert status.queue_position == (place.position if place else None)
    assert status.message.startswith("Kueue: insufficient quota")
    assert ("queuePosition 2 is Kueue's" in status.message) is (place is not None)

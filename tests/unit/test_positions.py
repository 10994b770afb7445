"""Queue-position writes: head exact, the rest only on large moves, within a token budget; and
the cheap scheduling view (QueueEntry) agrees with the pydantic one (JobView)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lora_operator.k8s import Conflict
from lora_operator.positions import EXACT_HEAD, PositionWriter, estimate_worth_writing, worth_writing
from lora_operator.views import JobView, QueueEntry


def body(uid: str, phase: str = "Queued", position: int | None = None, rv: str = "1", **spec) -> dict:
    status = {"phase": phase, "resolvedSpec": {"placement": {"gpuType": "h100", "nodeSelector": {"a": "b"}}}}
    if position is not None:
        status["queuePosition"] = position
    return {"metadata": {"uid": uid, "name": f"job-{uid}", "namespace": "ns", "resourceVersion": rv,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"priority": 3, **spec}, "status": status}


class FakeKube:
    def __init__(self, conflict: set[str] = frozenset()):
        self.patches: list[tuple[str, int]] = []
        self.sent: list[tuple[str, dict]] = []
        self.conflict = conflict

    def patch_job_status(self, namespace, name, status, resource_version=None):
        if name in self.conflict:
            raise Conflict(name)
        self.sent.append((name, status))
        if "queuePosition" in status:
            self.patches.append((name, status["queuePosition"]))


def test_head_positions_are_exact_and_deep_ones_move_only_by_a_tenth():
    assert worth_writing(None, 500)
    assert worth_writing(EXACT_HEAD + 1, EXACT_HEAD)
    assert not worth_writing(7, 7)
    assert not worth_writing(1000, 950)
    assert worth_writing(1000, 900)


def test_writer_spends_its_budget_head_first_and_skips_conflicts():
    entries = {u: QueueEntry.of(body(u)) for u in ("a", "b", "c", "d")}
    writer = PositionWriter(FakeKube(conflict={"job-b"}), rate=0.0, burst=3)  # type: ignore[arg-type]
    writer.wanted = {"a": 4, "b": 1, "c": 2, "d": 3}
    assert writer.write(entries) == 2
    assert writer.kube.patches == [("job-c", 2), ("job-d", 3)]  # b conflicted, a had no token left
    assert writer.write(entries) == 0  # no refill at rate 0


def test_writer_leaves_a_job_that_a_pass_is_claiming_and_spends_no_token_on_it():
    entries = {u: QueueEntry.of(body(u)) for u in ("a", "b")}
    writer = PositionWriter(FakeKube(), rate=0.0, burst=1, claiming=lambda uid: uid == "a")  # type: ignore[arg-type]
    writer.wanted = {"a": 1, "b": 2}
    assert writer.write(entries) == 1
    assert writer.kube.patches == [("job-b", 2)]  # the claim on a must not conflict with a position write


NOON = datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_writer_sends_nothing_for_a_job_the_next_pass_no_longer_places():
    """The pass thread replaces `wanted` while a round writes (each write is a round trip): a job
    that pass admitted has no position any more, and no empty patch may be sent for it."""
    entries = {u: QueueEntry.of(body(u)) for u in ("a", "b")}

    class PassMidRound(FakeKube):
        def patch_job_status(self, namespace, name, status, resource_version=None):
            super().patch_job_status(namespace, name, status, resource_version)
            writer.wanted = {"a": 1}  # the next pass admitted b

    writer = PositionWriter(PassMidRound(), rate=0.0, burst=5)  # type: ignore[arg-type]
    writer.wanted = {"a": 1, "b": 2}
    assert writer.write(entries) == 1
    assert writer.kube.sent == [("job-a", {"queuePosition": 1})]
    assert writer._tokens == 4  # nothing spent on b


def test_estimates_are_rewritten_only_when_they_move_by_more_than_a_minute():
    assert estimate_worth_writing(None, NOON)
    assert not estimate_worth_writing("2026-01-01T12:00:00Z", NOON + timedelta(seconds=59))
    assert not estimate_worth_writing("2026-01-01T12:00:00Z", NOON - timedelta(seconds=60))
    assert estimate_worth_writing("2026-01-01T12:00:00Z", NOON + timedelta(seconds=61))
    assert estimate_worth_writing("2026-01-01T12:00:00Z", None)  # the estimate is gone: remove it
    assert not estimate_worth_writing(None, None)


def test_writer_sends_position_and_estimate_in_one_patch_and_skips_small_estimate_moves():
    stored = body("b", position=2)
    stored["status"]["queue"] = {"estimatedStartTime": "2026-01-01T12:00:00Z"}
    entries = {"a": QueueEntry.of(body("a")), "b": QueueEntry.of(stored), "c": QueueEntry.of(body("c"))}
    writer = PositionWriter(FakeKube(), rate=0.0, burst=10)  # type: ignore[arg-type]
    writer.wanted = {"a": 1, "b": 2, "c": 3}
    writer.estimates = {"a": NOON, "b": NOON + timedelta(seconds=30), "c": None}
    assert writer.write(entries) == 2
    noon = {"estimatedStartTime": "2026-01-01T12:00:00Z"}
    assert writer.kube.sent == [("job-a", {"queuePosition": 1, "queue": noon}), ("job-c", {"queuePosition": 3})]
    entries["b"] = QueueEntry.of(stored)
    writer.estimates["b"] = NOON + timedelta(minutes=5)
    assert [uid for _, uid in writer.due([entries["b"]])] == ["b"]
    assert writer.fields(entries["b"]) == {"queue": {"estimatedStartTime": "2026-01-01T12:05:00Z"}}


def test_only_resolved_queued_jobs_that_are_not_suspended_or_deleted_wait_for_a_node():
    waiting = QueueEntry.of(body("a")).queued
    assert waiting is not None and JobView.of(body("a")).waiting()
    assert (waiting.priority, waiting.gpu_type, dict(waiting.node_selector)) == (3, "h100", {"a": "b"})
    deleting = body("e")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:01Z"
    for raw in (body("b", suspend=True), body("c", phase="Running"), {**body("d"), "status": {"phase": "Queued"}},
                deleting):
        assert QueueEntry.of(raw).queued is None and not JobView.of(raw).waiting()


def test_the_writers_lazy_due_order_is_the_sorted_due_list_and_it_writes_the_same_jobs():
    import random

    from lora_operator.scheduling import TrainerPod, schedule

    for seed in range(30):
        rng = random.Random(seed)
        bodies = []
        for i in range(rng.randint(0, 40)):
            raw = body(f"u{i:02d}", phase=rng.choice(["Queued"] * 4 + ["Running"]),
                       position=rng.choice([None, rng.randint(1, 50)]), rv=str(i))
            raw["metadata"]["creationTimestamp"] = f"2026-01-01T00:00:{rng.randrange(60):02d}Z"
            raw["metadata"]["namespace"] = rng.choice(["a", "b"])
            if rng.random() < 0.5:
                raw["status"]["queue"] = {"estimatedStartTime": f"2026-01-01T12:{rng.randrange(10):02d}:00Z"}
            bodies.append(raw)
        entries = {raw["metadata"]["uid"]: QueueEntry.of(raw) for raw in bodies}
        queued = [e.queued for e in entries.values() if e.queued is not None]
        held = [TrainerPod("p", None, job.uid, True, job.namespace) for job in queued if rng.random() < 0.2]
        writer = PositionWriter(FakeKube(), rate=0.0, burst=rng.randint(0, 8))  # type: ignore[arg-type]
        writer.wanted = schedule(queued, [], held, NOON, gpu_type_label="gpu").positions  # held jobs: no position
        if rng.random() < 0.3:  # a hand-made mapping, out of order
            writer.wanted = {uid: rng.randint(1, 60) for uid in rng.sample(sorted(entries), len(entries) // 2)}
        writer.estimates = {uid: rng.choice([None, NOON + timedelta(minutes=rng.randrange(10))])
                            for uid in entries if rng.random() < 0.6}
        expected = writer.due(entries.values())
        assert list(writer.due_in_order(entries)) == expected
        burst = writer.burst
        writer.write(entries)
        assert [name for name, _ in writer.kube.sent] == [f"job-{uid}" for _, uid in expected[:burst]]
        assert writer.any_due == bool(expected)

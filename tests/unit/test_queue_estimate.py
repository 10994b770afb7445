"""The estimated start of queued jobs: the queue simulated on the running jobs' ETAs, checked
against schedules worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lora_operator.kubectl_lora.estimates import queue_estimates
from lora_operator.kubectl_lora.tables import jobs_table
from lora_operator.scheduling import GpuNode, QueuedJob, RunningJob, estimated_starts

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LABEL = "lora-operator.io/gpu-type"


def job(uid, *, ns="a", prio=0, age=0, **kw) -> QueuedJob:
    return QueuedJob(uid=uid, namespace=ns, name=uid, priority=prio, created=NOW - timedelta(seconds=1000 - age), **kw)


def node(name, gpu_type=None) -> GpuNode:
    return GpuNode(name, True, True, 1, {LABEL: gpu_type} if gpu_type else {})


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def estimate(queued, nodes, running, **kw):
    return estimated_starts(queued, nodes, running, NOW, gpu_type_label=LABEL, **kw)


def test_hand_computed_schedule_over_two_nodes():
    # Node a (h100) is busy 600 s more, node b 300 s more. In queue order: q1 needs an h100 (runs 100 s),
    # q2 and q3 run anywhere (1000 s, 50 s).
    #   t=300: b frees; q1 fits only a, so q2 takes b (until 1300).
    #   t=600: a frees; q1 takes it (until 700).
    #   t=700: a frees; q3 takes it.
    queued = [job("q1", age=1, gpu_type="h100"), job("q2", age=2), job("q3", age=3)]
    running = [RunningJob("r1", "a", "a", 600), RunningJob("r2", "a", "b", 300)]
    starts = estimate(queued, [node("a", "h100"), node("b")], running,
                      durations={"q1": 100, "q2": 1000, "q3": 50})
    assert starts == {"q2": at(300), "q1": at(600), "q3": at(700)}


def test_priority_and_namespace_turns_decide_who_takes_the_next_node():
    # Node m is busy for long with a job of namespace a; node n frees in 100 s. The high-priority
    # job goes first (100 s, runs 10 s); then b's job goes before a's older one, because a already
    # holds a node (its turn), and a1 follows when b1 ends.
    queued = [job("a1", ns="a", age=1), job("b1", ns="b", age=2), job("hi", ns="a", prio=5, age=3)]
    running = [RunningJob("r1", "a", "m", 5000), RunningJob("r2", "c", "n", 100)]
    starts = estimate(queued, [node("m"), node("n")], running, default_seconds=10)
    assert starts == {"hi": at(100), "b1": at(110), "a1": at(120)}


def test_backoff_delays_a_job_until_its_not_before():
    # The node is free now, but q1 waits for its backoff (50 s); q2 behind it takes the node
    # now and runs 200 s, so q1 starts when q2 ends.
    queued = [job("q1", age=1, not_before=at(50)), job("q2", age=2)]
    starts = estimate(queued, [node("n")], [], durations={"q2": 200, "q1": 10})
    assert starts == {"q2": at(0), "q1": at(200)}


def test_no_estimate_behind_a_run_of_unknown_length_or_for_a_job_no_node_fits():
    queued = [job("q1", age=1), job("q2", age=2), job("gpu", age=3, gpu_type="b200")]
    starts = estimate(queued, [node("n")], [RunningJob("r", "a", "n", 30)])
    # q1 starts when r ends; its own length is unknown, so nothing is known after it.
    assert starts == {"q1": at(30)}
    # Once running jobs' ETAs are unknown too, nothing is.
    assert estimate(queued, [node("n")], [RunningJob("r", "a", "n", None)], default_seconds=10) == {}


def body(uid, phase, *, ns="a", created="2026-01-01T11:00:00Z", **status) -> dict:
    meta = {"name": uid, "namespace": ns, "uid": uid, "creationTimestamp": created}
    status = {"phase": phase, **status}
    if phase == "Queued":
        status["resolvedSpec"] = {"placement": {}}
    return {"metadata": meta, "spec": {}, "status": status}


def test_list_shows_the_estimate_from_the_running_jobs_eta_less_the_time_since_it_was_reported():
    # r reported 20 s ago that 120 s remain, at 0.1 steps/s for 30 steps (a whole run: 300 s).
    # Nodes are not readable: r's node stands in. q1 starts in 100 s, q2 a run (300 s) later.
    progress = {"step": 18, "totalSteps": 30, "stepsPerSecond": 0.1, "etaSeconds": 120,
                "updatedAt": "2026-01-01T11:59:40Z"}
    jobs = [body("r", "Running", node="n", progress=progress), body("q1", "Queued"),
            body("q2", "Queued", created="2026-01-01T11:00:01Z")]
    starts = queue_estimates(jobs, None, NOW)
    assert starts == {"q1": at(100), "q2": at(400)}
    lines = jobs_table(jobs, NOW, starts=starts).splitlines()
    assert lines[0].split()[5] == "STARTS"
    assert [line.split()[5] for line in lines[1:]] == ["~1m40s", "~6m40s", "-"]
    # The operator's estimate, once it writes one, wins.
    jobs[2]["status"]["queue"] = {"estimatedStartTime": "2026-01-01T13:00:00Z"}
    assert queue_estimates(jobs, None, NOW)["q2"] == at(3600)
    # With the nodes readable, a job asking for a GPU type no node has gets none.
    gpu = {"metadata": {"name": "n", "labels": {}}, "spec": {},
           "status": {"allocatable": {"nvidia.com/gpu": "1"}, "conditions": [{"type": "Ready", "status": "True"}]}}
    jobs[1]["status"]["resolvedSpec"] = {"placement": {"gpuType": "b200"}}
    assert queue_estimates(jobs, [gpu], NOW) == {"q2": at(3600)}


def test_the_operators_estimate_of_a_long_queue_simulates_fewer_passes_and_still_covers_every_job():
    # One node: each simulated pass starts one job, so the jobs estimated count the passes. At
    # 200 passes 2500 queued jobs cost 2500 x 200 job visits a round on the position writer's
    # thread (1.7 s of CPU at 5000 jobs, bench/RESULTS.md); the work is bounded instead.
    from types import SimpleNamespace

    from lora_operator.config import OperatorConfig
    from lora_operator.controller import ESTIMATE_PASSES, ESTIMATE_WORK, Controller
    from lora_operator.metrics import OperatorMetrics
    from lora_operator.own_writes import OwnWrites

    queued = 2500
    assert ESTIMATE_WORK // queued < ESTIMATE_PASSES - 1
    progress = {"step": 18, "totalSteps": 30, "stepsPerSecond": 0.1, "etaSeconds": 120,
                "updatedAt": "2026-01-01T11:59:40Z"}
    bodies = [body("r", "Running", node="n", progress=progress)] + [
        body(f"q{i:04d}", "Queued", created=f"2026-01-01T{10 + i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z")
        for i in range(queued)]
    controller = Controller(SimpleNamespace(own_writes=OwnWrites()), OperatorConfig(), OperatorMetrics(),
                            lambda *a: None)
    controller.bind({b["metadata"]["uid"]: b for b in bodies}, {}, {"n": [node("n")]})
    for b in bodies:
        controller.job_event(b["metadata"]["uid"])
    controller.estimate_starts()
    estimates = controller.positions.estimates
    assert len(estimates) == queued  # every waiting job is covered: an estimate or None
    estimated = sorted(uid for uid, start in estimates.items() if start is not None)
    assert 0 < len(estimated) <= ESTIMATE_WORK // queued
    assert estimated == [f"q{i:04d}" for i in range(len(estimated))]  # the head of the queue
    assert estimates["q0000"] is not None and estimates["q0001"] - estimates["q0000"] == timedelta(seconds=300)

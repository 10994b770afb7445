"""kill -9 of the operator at random moments while two peering replicas drain a queue.

Judged only from the API server: a watch the test keeps on trainer pods (every version of every
pod, in resourceVersion order) and the jobs' final status. The test plays the kubelet: each
Running pod ends Succeeded after a short random time.
"""

from __future__ import annotations

import json
import random
import time

import pytest
from chaoslib import (
    PEERING,
    PodCompleter,
    PodHistory,
    double_bookings,
    double_runs,
    job,
    list_jobs,
    make_namespace,
    phases,
    succeeded_pods_by_job,
)

from testground.operator import OperatorProcess

pytestmark = pytest.mark.cluster

PEERING_LIFETIME = "10"
"""Seconds a dead replica's peering record stays alive; the standby takes over after it."""
SIZES = [  # jobs, GPU nodes, kills, how long a pod runs (s)
    pytest.param(10, 3, 2, (1.0, 3.0), id="short-10-jobs-2-kills"),
    pytest.param(200, 10, 6, (0.2, 1.5), id="long-200-jobs-6-kills",
                 marks=[pytest.mark.chaos, pytest.mark.timeout(1800)]),
]
RESULTS: dict[str, dict] = {}
"""Counts of each run, for bench/RESULTS.md (printed at the end of the test)."""


def replica(ground, work, name: str) -> OperatorProcess:
    """A peering replica with a short peering lifetime (`start` picks its priority)."""
    return OperatorProcess(ground, work / f"operator-{name}.log", args=(),
                           extra_env={"LORA_PEERING_LIFETIME": PEERING_LIFETIME})


def start(op: OperatorProcess, rng: random.Random) -> OperatorProcess:
    """(Re)starts a replica with a new random kopf priority, as `lora-operator run` picks one; the test
    sets it itself to know which replica leads (the highest priority alive)."""
    op.args = ("--priority", str(rng.randint(1, 1_000_000)))
    return op.start()


def priority(op: OperatorProcess) -> int:
    return int(op.args[1])


@pytest.mark.parametrize(("jobs", "nodes", "kills", "runtime"), SIZES)
def test_replicas_killed_at_random_finish_every_job_once_without_double_booking(own_ground, work, jobs, nodes,
                                                                                  kills, runtime, request):
    ground = own_ground
    rng = random.Random(1000 + jobs)
    ground.apply(PEERING)
    ground.add_gpu_nodes(nodes, gpus=8, gpu_type="chaos", prefix="chaos")
    ns = make_namespace(ground)
    completer = PodCompleter(ground, seed=jobs, low=runtime[0], high=runtime[1])
    history = PodHistory(ground, on_event=completer).start()
    replicas = [start(replica(ground, work, "a"), rng), start(replica(ground, work, "b"), rng)]
    started = time.monotonic()
    kill_log: list[str] = []
    try:
        names = [f"job-{i:04d}" for i in range(jobs)]
        for chunk in range(0, jobs, 50):
            ground.apply([job(n, ns, "chaos", priority=rng.randint(0, 3)) for n in names[chunk:chunk + 50]])
        # kill moments: random points in the drain, measured in finished jobs, plus a random delay
        marks = sorted(rng.uniform(0.05, 0.8) * jobs for _ in range(kills))
        for k, mark in enumerate(marks):
            ground.wait_for(lambda m=mark: phases(list_jobs(ground, ns)).get("Succeeded", 0) >= m, timeout=600,
                            what=f"{mark:.0f} jobs done", interval=0.5)
            time.sleep(rng.uniform(0, 1.5))
            # the first kill takes the leader (the standby must take over), the others a random replica
            victim = max(replicas, key=priority) if k == 0 else rng.choice(replicas)
            role = "leader" if victim is max(replicas, key=priority) else "standby"
            victim.kill()
            done = phases(list_jobs(ground, ns)).get("Succeeded", 0)
            kill_log.append(f"t={time.monotonic() - started:.1f}s kill -9 {role} {victim.log.stem} at {done} done")
            time.sleep(rng.uniform(0, 3))
            start(victim, rng)

        def all_done() -> bool:
            return phases(list_jobs(ground, ns)).get("Succeeded", 0) == jobs
        try:
            ground.wait_for(all_done, timeout=300 + 3 * jobs, what="every job Succeeded", interval=1)
        except TimeoutError:
            raise AssertionError(f"{phases(list_jobs(ground, ns))}; kills {kill_log}\n"
                                 f"--- a ---\n{replicas[0].tail(30)}\n--- b ---\n{replicas[1].tail(30)}") from None
        # orphans: every trainer pod is removed once its job finished
        ground.wait_for(lambda: not history.current(), timeout=120, what="no trainer pod left", interval=0.5)
        makespan = time.monotonic() - started
    finally:
        for r in replicas:
            r.stop()
        history.stop()

    events = history.snapshot()
    assert double_bookings(events) == []
    assert double_runs(events) == []
    final = list_jobs(ground, ns)
    assert len(final) == jobs
    succeeded = succeeded_pods_by_job(events)
    by_uid = {j["metadata"]["uid"]: j for j in final}
    once = {uid: len(succeeded.get(uid, ())) for uid in by_uid}
    assert all(n == 1 for n in once.values()), {by_uid[u]["metadata"]["name"]: n for u, n in once.items() if n != 1}
    for j in final:
        attempts = j["status"]["attempts"]
        assert [a["reason"] for a in attempts].count("TrainingComplete") == 1, (j["metadata"]["name"], attempts)
        assert attempts[-1]["reason"] == "TrainingComplete"
        assert j["status"].get("retries", 0) == 0, (j["metadata"]["name"], attempts)
    pods_created = len({e.uid for e in events})
    RESULTS[request.node.callspec.id] = {
        "jobs": jobs, "nodes": nodes, "kills": len(kill_log), "trainer_pods": pods_created,
        "extra_attempts": pods_created - jobs, "relists": history.relists, "double_bookings": 0, "lost": 0,
        "seconds": round(makespan, 1), "kill_log": kill_log,
    }
    print(json.dumps(RESULTS[request.node.callspec.id]))

"""kube-apiserver restarts while the operator drains a queue: the operator's watches reconnect,
every job ends Succeeded once, no node is double-booked and no pod is left behind.

The control plane is the test's own (a restart of the session's shared ground would hit other
tests). kwok runs the pods; the test ends each Running pod after a short random time.
"""

from __future__ import annotations

import json
import random
import time

import pytest
from chaoslib import (
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

SIZES = [  # jobs, GPU nodes, restarts
    pytest.param(6, 2, 1, id="short-6-jobs-1-restart"),
    pytest.param(40, 4, 3, id="long-40-jobs-3-restarts", marks=[pytest.mark.chaos, pytest.mark.timeout(900)]),
]
RESULTS: dict[str, dict] = {}


def succeeded(ground, ns: str) -> int:
    try:
        return phases(list_jobs(ground, ns)).get("Succeeded", 0)
    except Exception:  # noqa: BLE001 - the apiserver is restarting
        return -1


@pytest.mark.parametrize(("jobs", "nodes", "restarts"), SIZES)
def test_apiserver_restarts_mid_run_lose_and_duplicate_nothing(own_ground, work, jobs, nodes, restarts, request):
    ground = own_ground
    rng = random.Random(jobs)
    ground.add_gpu_nodes(nodes, gpus=8, gpu_type="restart", prefix="restart")
    ns = make_namespace(ground)
    history = PodHistory(ground, on_event=PodCompleter(ground, seed=jobs, low=1.0, high=2.5)).start()
    operator = OperatorProcess(ground, work / "operator.log").start()
    started = time.monotonic()
    outages = []
    try:
        ground.apply([job(f"job-{i:03d}", ns, "restart", priority=rng.randint(0, 2)) for i in range(jobs)])
        for mark in sorted(rng.uniform(0.1, 0.7) * jobs for _ in range(restarts)):
            ground.wait_for(lambda m=mark: succeeded(ground, ns) >= m, timeout=300, interval=0.5,
                            what=f"{mark:.0f} jobs done")
            down = time.monotonic()
            ground.control_plane.restart_apiserver()
            outages.append(round(time.monotonic() - down, 1))
        try:
            ground.wait_for(lambda: succeeded(ground, ns) == jobs, timeout=300, interval=1, what="every job done")
        except TimeoutError:
            raise AssertionError(f"{phases(list_jobs(ground, ns))}\n{operator.tail(40)}") from None
        ground.wait_for(lambda: not history.current(), timeout=120, interval=0.5, what="no trainer pod left")
        assert operator.proc.alive(), "the operator exited instead of reconnecting"
    finally:
        operator.stop()
        history.stop()

    events = history.snapshot()
    assert double_bookings(events) == [] and double_runs(events) == []
    final = list_jobs(ground, ns)
    done = succeeded_pods_by_job(events)
    assert {j["metadata"]["uid"]: len(done.get(j["metadata"]["uid"], ())) for j in final} == {
        j["metadata"]["uid"]: 1 for j in final}
    for j in final:
        reasons = [a["reason"] for a in j["status"]["attempts"]]
        assert reasons.count("TrainingComplete") == 1 and reasons[-1] == "TrainingComplete", reasons
    RESULTS[request.node.callspec.id] = {"jobs": jobs, "restarts": len(outages), "outage_seconds": outages,
                                         "trainer_pods": len({e.uid for e in events}), "relists": history.relists,
                                         "seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(RESULTS[request.node.callspec.id]))

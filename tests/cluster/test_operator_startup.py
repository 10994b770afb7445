"""An operator starting over a cluster that already has work: jobs waiting from before, and jobs
that keep coming while it lists its nodes. The jobs are the job handler's own index, not a kopf
index (why: see lora_operator/handlers.py); these tests show what kopf's index gate used to give
still holds: the first pass sees every job that existed, and nothing waits behind the start."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from test_operator import end_pod, job, ns, trainer_pods  # noqa: F401

from testground.operator import OperatorProcess, install_crds, run_kubectl_json

pytestmark = pytest.mark.cluster

INFLOW_NODES = 150
"""GPU nodes the operator lists while jobs keep arriving (kopf lists them in pages of two)."""
EARLY_JOBS, INFLOW_JOBS = 30, 90
"""Jobs waiting before the operator starts, and jobs created while it starts."""


@pytest.fixture
def fresh_operator(ground, ns, tmp_path):  # noqa: F811
    """An operator for `ns` alone, started by the test (after its jobs exist); pages of two objects
    per list request, so the relist of jobs and nodes comes in many pages."""
    install_crds(ground)
    op = OperatorProcess(ground, tmp_path / "operator.log", args=("--standalone", "--namespace", ns),
                         extra_env={"LORA_LIST_CHUNK": "2"})
    yield op
    op.stop()


def jobs_by_phase(ground, ns: str) -> Counter[str]:  # noqa: F811
    items = run_kubectl_json(ground, "get", "ltj", "-n", ns)["items"]
    return Counter(item.get("status", {}).get("phase") or "-" for item in items)


def test_jobs_waiting_before_the_start_are_admitted_oldest_first(ground, ns, fresh_operator):  # noqa: F811
    """Jobs queued by one operator process; a node frees while none runs; the next process must
    give it to the oldest. Its relist comes in name order, here the youngest first: a pass over
    the first page would admit the youngest. The first pass waits until every listed job is in."""
    names = [f"job-{i}" for i in range(5, -1, -1)]  # job-5 is the oldest, job-0 the youngest
    fresh_operator.start()
    for name in names:
        ground.apply({**job(name, "startup-order"), "metadata": {"name": name, "namespace": ns}})
        time.sleep(1.1)  # creationTimestamp has seconds: each job a second older than the next
    ground.wait_for(lambda: jobs_by_phase(ground, ns)["Queued"] == len(names), timeout=120, what="all Queued")
    fresh_operator.stop()
    ground.add_gpu_nodes(1, gpus=1, gpu_type="startup-order", prefix="startup-order")
    fresh_operator.start()
    admitted: list[str] = []

    def next_running() -> dict | None:
        return next((p for p in trainer_pods(ground, ns) if p["status"].get("phase") == "Running"
                     and p["metadata"]["labels"]["lora-operator.io/job"] not in admitted), None)

    for _ in range(2):
        ground.wait_for(lambda: next_running() is not None, timeout=120, what="the next running trainer pod")
        pod = next_running()
        admitted.append(pod["metadata"]["labels"]["lora-operator.io/job"])
        end_pod(ground, ns, pod["metadata"]["name"], 0)
    assert admitted == ["job-5", "job-4"]


def test_jobs_created_while_the_operator_lists_many_nodes_are_all_admitted_once(ground, ns, fresh_operator):  # noqa: F811
    """Jobs arrive steadily while the operator starts beside many nodes. Before, kopf held every
    job's handler while any job or node was not indexed yet, and with jobs arriving steadily that
    never ended: a job's handler ran only in the moments between. Every job must be admitted,
    each to one pod, no node twice."""
    nodes = ground.add_gpu_nodes(INFLOW_NODES, gpus=1, gpu_type="inflow", prefix="inflow")
    try:
        early = [f"early-{i:03d}" for i in range(EARLY_JOBS)]
        ground.apply([{**job(name, "inflow"), "metadata": {"name": name, "namespace": ns}} for name in early])
        created: list[str] = []

        def inflow() -> None:
            for i in range(INFLOW_JOBS):
                name = f"inflow-{i:03d}"
                ground.apply({**job(name, "inflow"), "metadata": {"name": name, "namespace": ns}})
                created.append(name)

        submitter = threading.Thread(target=inflow)
        fresh_operator.start()
        submitter.start()
        submitter.join()
        assert len(created) == INFLOW_JOBS
        total = EARLY_JOBS + INFLOW_JOBS

        def all_running() -> bool:
            return jobs_by_phase(ground, ns)["Running"] == total

        try:
            ground.wait_for(all_running, timeout=600, what=f"{total} jobs Running", interval=2)
        except TimeoutError:
            raise AssertionError(f"{jobs_by_phase(ground, ns)}\n{fresh_operator.tail()}") from None
        pods = trainer_pods(ground, ns)
        per_job = Counter(p["metadata"]["labels"]["lora-operator.io/job"] for p in pods)
        per_node = Counter(p["spec"].get("nodeName") for p in pods)
        assert set(per_job) == set(early) | set(created) and set(per_job.values()) == {1}
        assert set(per_node.values()) == {1} and set(per_node) <= set(nodes)
    finally:
        ground.kubectl("delete", "node", *nodes, "--wait=false", timeout=120)

"""Kueue admits the operator's batch/v1 Jobs: the real Kueue manager (built from its Go module) on the
test ground, the Jobs rendered by lora_operator.kueue, and the state the operator reads from the real
Workloads, with no operator running. The pod-history watcher of the fault tests records every trainer
pod across the package (conftest.py): no node ever held two trainer pods, no job ever had two live ones."""

from __future__ import annotations

import time

import pytest

from chaos.chaoslib import double_bookings, double_runs
from cluster.kueue.kueuelib import (
    CONFIG,
    NS,
    QUEUE,
    SPEC,
    WorkloadWatch,
    get,
    owner,
    release_held_pods,
    states,
    submit,
    ungated,
    workload_of,
)
from lora_operator.api.conditions import Phase
from lora_operator.kueue import build_trainer_job, workload_state
from lora_operator.render import pod_name

pytestmark = pytest.mark.cluster


def test_a_quota_of_two_gpu_nodes_over_three_is_never_exceeded(ground, kueue):
    names = ["q0", "q1", "q2"]
    watcher = WorkloadWatch(ground)
    watcher.start()
    time.sleep(1)  # the watch is open before the first Workload
    for name in names:
        submit(ground, name, hold=True)

    def two_hold_quota_and_one_waits() -> bool:
        held = [states(ground, [n])[n].holds_quota if workload_of(ground, n) else None for n in names]
        return held.count(True) == 2 and held.count(False) == 1

    ground.wait_for(two_hold_quota_and_one_waits, timeout=120, what="two Workloads admitted, one waiting",
                    interval=1)

    def finished() -> bool:
        release_held_pods(ground)
        return all(workload_state(workload_of(ground, n)).finished for n in names)

    ground.wait_for(finished, timeout=120, what="the three Workloads finished", interval=1)
    time.sleep(1)
    watcher.watch.stop()
    assert watcher.most_holding_quota() == 2  # two at once, never three
    # Kueue's flavor put every pod on the pool's nodes
    nodes = {p["spec"].get("nodeName") for p in get(ground, "pods")}
    assert nodes and all(n and n.startswith("kq-") for n in nodes), nodes


def test_deleting_the_training_job_removes_its_job_and_workload(ground, kueue):
    submit(ground, "gone")
    ground.wait_for(lambda: workload_of(ground, "gone") is not None, timeout=60, what="the Workload")
    ground.kubectl("delete", "ltj", "gone", "-n", NS, "--wait=false")

    def cleaned() -> bool:
        jobs = [j["metadata"]["name"] for j in get(ground, "jobs")]
        return pod_name("gone", 1) not in jobs and workload_of(ground, "gone") is None

    ground.wait_for(cleaned, timeout=90, what="the Job and Workload garbage-collected")


def test_the_operator_adapter_creates_reads_and_deletes_a_kueue_job(ground, kueue):
    """lora_operator.k8s.Kube against real Kueue: the Job it creates gets a Workload that it finds by the
    Job's uid, the admitted state maps to Running, the Job's pod (a suffixed name) is found by its
    controller-uid, and deleting the Job removes the Workload too."""
    from lora_operator.k8s import Kube

    kube = Kube(ground.api_client())
    uid = owner(ground, "adapter")
    manifest = ungated(build_trainer_job(job_name="adapter", namespace=NS, job_uid=uid, spec=SPEC, queue=QUEUE,
                                         gpus=8, attempt=1, resume=False, config=CONFIG))
    name = manifest["metadata"]["name"]
    assert kube.get_batch_job(NS, name) is None
    assert kube.create_batch_job(manifest) is True
    assert kube.create_batch_job(manifest) is False  # a second create of the same attempt is a no-op
    job = kube.get_batch_job(NS, name)
    job_uid = job["metadata"]["uid"]

    seen: list = []

    def admitted() -> bool:
        job = kube.get_batch_job(NS, name)
        seen.append(workload_state(kube.workload_of(NS, job_uid), bool(job["spec"].get("suspend"))))
        return seen[-1].phase == Phase.RUNNING  # admitted and unsuspended (or finished: kwok ends pods at once)

    ground.wait_for(admitted, timeout=90, what="the Workload admitted and the Job unsuspended", interval=1)
    assert "KueueAdmitted" in {c.type for c in seen[-1].conditions}, seen[-1]
    ground.wait_for(lambda: kube.pods_of_batch_job(NS, job_uid), timeout=60, what="the Job's pod")
    pods = kube.pods_of_batch_job(NS, job_uid)
    assert len(pods) == 1 and pods[0]["metadata"]["name"].startswith(name + "-"), [p["metadata"]["name"] for p in pods]
    assert pods[0]["spec"]["nodeName"].startswith("kq-")  # Kueue's flavor picked the pool
    assert kube.pods_of_batch_job(NS, "no-such-uid") == []

    kube.delete_batch_job(NS, name)
    kube.delete_batch_job(NS, name)  # gone already: fine
    ground.wait_for(lambda: kube.get_batch_job(NS, name) is None and kube.workload_of(NS, job_uid) is None,
                    timeout=90, what="the Job and its Workload gone", interval=1)


def test_no_node_ever_held_two_trainer_pods_and_no_job_had_two(history):
    """Across this package's tests (run after them: conftest.py): the apiserver's own record of every trainer pod."""
    events = [e for e in history.snapshot() if e.namespace.startswith("kq")]
    assert events, "no trainer pod recorded"
    assert double_bookings(events) == []
    assert double_runs(events) == []

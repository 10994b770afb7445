"""LORA_NAMESPACE_NODE_LIMITS on the real control plane: a namespace at its limit waits, others run."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from test_operator import end_pod, trainer_pods, wait_phase

from testground.operator import OperatorProcess, install_crds, kwok_job, storage_secret

pytestmark = pytest.mark.cluster

LIMITED, FREE = f"lim-{uuid.uuid4().hex[:6]}", f"free-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def operator(ground, tmp_path_factory):
    install_crds(ground)
    for ns in (LIMITED, FREE):
        ground.kubectl("create", "namespace", ns)
        ground.apply(storage_secret(ground, ns))
    env = {"LORA_NAMESPACE_NODE_LIMITS": json.dumps({LIMITED: 1})}
    op = OperatorProcess(ground, tmp_path_factory.mktemp("operator") / "operator.log", extra_env=env).start()
    yield op
    op.stop()
    for ns in (LIMITED, FREE):
        ground.kubectl("delete", "namespace", ns, "--wait=false")


def limit_events(ground, name: str) -> list[dict]:
    events = json.loads(ground.kubectl("get", "events", "-n", LIMITED, "-o", "json",
                                       "--field-selector", f"involvedObject.name={name}").stdout)["items"]
    return [e for e in events if e["reason"] == "NamespaceLimit"]


def active(ground, ns: str) -> list[dict]:
    return [p for p in trainer_pods(ground, ns) if p["status"].get("phase") in ("Pending", "Running")]


def test_a_namespace_at_its_limit_waits_while_another_uses_the_free_nodes(ground, operator):
    for name in ("a0", "a1", "a2"):
        ground.apply(kwok_job(name, "limits", namespace=LIMITED))
    ground.apply(kwok_job("b0", "limits", namespace=FREE))
    for ns, name in ((LIMITED, "a0"), (LIMITED, "a1"), (LIMITED, "a2"), (FREE, "b0")):
        wait_phase(ground, operator, ns, name, "Queued")
    ground.add_gpu_nodes(3, gpus=8, gpu_type="limits", prefix="limits")
    wait_phase(ground, operator, FREE, "b0", "Running")
    for expected in ("a0", "a1", "a2"):  # one at a time, in FIFO order, although a node stays free
        wait_phase(ground, operator, LIMITED, expected, "Running")
        time.sleep(2)  # passes run on every change: a second admission in LIMITED would show by now
        pods = active(ground, LIMITED)
        assert [p["metadata"]["labels"]["lora-operator.io/job"] for p in pods] == [expected], operator.tail()
        assert len(active(ground, FREE)) == 1
        end_pod(ground, LIMITED, pods[0]["metadata"]["name"], 0)
        wait_phase(ground, operator, LIMITED, expected, "Succeeded")
    # each job that waited for the limit was told why once, however many passes it waited through
    assert [len(limit_events(ground, name)) for name in ("a0", "a1", "a2")] == [0, 1, 1]
    message = limit_events(ground, "a1")[0]["message"]
    assert f"namespace {LIMITED} holds its limit of 1 GPU node(s) (LORA_NAMESPACE_NODE_LIMITS)" in message

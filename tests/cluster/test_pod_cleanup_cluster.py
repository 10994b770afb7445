"""spec.cleanPodPolicy on the real control plane: None keeps a trainer pod that ended, its node free for the
next job; All (the default) deletes it; switching a finished job to All deletes what it kept; the garbage
collector takes kept pods with their job."""

from __future__ import annotations

import pytest
from test_operator import end_pod, get_job, job, ns, operator, running_pod, trainer_pods, wait_phase  # noqa: F401

pytestmark = pytest.mark.cluster


def pods_of(ground, namespace: str, name: str) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in trainer_pods(ground, namespace)
            if p["metadata"]["labels"]["lora-operator.io/job"] == name}


def test_with_none_an_ended_pod_is_kept_and_its_node_trains_the_next_job(ground, operator, ns):  # noqa: F811
    ground.add_gpu_nodes(1, gpus=1, gpu_type="keep", prefix="keep")
    ground.apply({**job("first", "keep", cleanPodPolicy="None"), "metadata": {"name": "first", "namespace": ns}})
    first = running_pod(ground, ns, "first")["metadata"]["name"]
    end_pod(ground, ns, first, 1)  # a failed attempt: retried, its pod kept for its log
    wait_phase(ground, operator, ns, "first", "Running")
    retry = running_pod(ground, ns, "first")["metadata"]["name"]
    assert retry != first
    end_pod(ground, ns, retry, 0)
    wait_phase(ground, operator, ns, "first", "Succeeded")
    ground.apply({**job("second", "keep"), "metadata": {"name": "second", "namespace": ns}})
    running_pod(ground, ns, "second")  # the only node: the kept pods hold none of it
    kept = pods_of(ground, ns, "first")
    assert {n: p["status"]["phase"] for n, p in kept.items()} == {first: "Failed", retry: "Succeeded"}
    assert not any(p["metadata"].get("deletionTimestamp") for p in kept.values())

    ground.kubectl("patch", "ltj", "first", "-n", ns, "--type=merge", "-p", '{"spec":{"cleanPodPolicy":"All"}}')
    ground.wait_for(lambda: not pods_of(ground, ns, "first"), timeout=30, what="the kept pods deleted")
    assert get_job(ground, ns, "first")["status"]["phase"] == "Succeeded"


def test_by_default_the_pod_goes_when_its_attempt_ends(ground, operator, ns):  # noqa: F811
    ground.add_gpu_nodes(1, gpus=1, gpu_type="clean", prefix="clean")
    ground.apply({**job("tidy", "clean"), "metadata": {"name": "tidy", "namespace": ns}})
    end_pod(ground, ns, running_pod(ground, ns, "tidy")["metadata"]["name"], 0)
    wait_phase(ground, operator, ns, "tidy", "Succeeded")
    ground.wait_for(lambda: not pods_of(ground, ns, "tidy"), timeout=30, what="the ended pod deleted")


def test_a_kept_pod_goes_with_its_job(ground, operator, ns):  # noqa: F811
    ground.add_gpu_nodes(1, gpus=1, gpu_type="gc", prefix="gc")
    ground.apply({**job("short", "gc", cleanPodPolicy="None"), "metadata": {"name": "short", "namespace": ns}})
    end_pod(ground, ns, running_pod(ground, ns, "short")["metadata"]["name"], 0)
    wait_phase(ground, operator, ns, "short", "Succeeded")
    assert pods_of(ground, ns, "short")
    ground.kubectl("delete", "ltj", "short", "-n", ns, "--timeout=60s")
    ground.wait_for(lambda: not pods_of(ground, ns, "short"), timeout=60, what="the kept pod gone with its job")

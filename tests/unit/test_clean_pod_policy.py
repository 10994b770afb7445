"""spec.cleanPodPolicy: All (the default) deletes a trainer pod once its attempt ended, None keeps it until
the job is deleted; a pod still running when its attempt or job ends goes either way. And the scheduling
pass reads only the pods of jobs that have an active one, so kept pods cost it nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from test_job_deletion import RecordingKube, lifecycle

from lora_operator.api import JobSpec
from lora_operator.job_index import JobIndex
from lora_operator.own_writes import OwnWrites
from lora_operator.views import JobView, pod_snapshot, slim_pod, trainer_pod

STARTED = "2026-01-01T00:00:00Z"
SPEC = {"output": {"uri": "file:///tmp/out"}, "retryPolicy": {"maxRetries": 2}}


def job(phase: str, spec: dict, **status) -> JobView:
    meta = {"name": "j", "namespace": "ns", "uid": "u", "resourceVersion": "7", "creationTimestamp": STARTED}
    conditions = [{"type": "Admitted", "status": "True", "reason": "NodeAssigned", "lastTransitionTime": STARTED},
                  {"type": "Running", "status": "True", "reason": "PodRunning", "lastTransitionTime": STARTED}]
    if phase == "Succeeded":
        conditions.append({"type": "Succeeded", "status": "True", "reason": "TrainingComplete",
                           "lastTransitionTime": STARTED})
    full = {"phase": phase, "attempt": 1, "node": "n1", "resolvedSpec": SPEC, "admittedAt": STARTED,
            "attempts": [{"number": 1, "pod": "j-a1", "node": "n1", "startTime": STARTED}],
            "conditions": conditions, **status}
    return JobView.of({"metadata": meta, "spec": spec, "status": full})


def pod(exit_code: int | None, name: str = "j-a1") -> dict:
    """The attempt's pod: running (None), or ended with `exit_code`."""
    if exit_code is None:
        status = {"phase": "Running", "containerStatuses": [{"name": "trainer", "state": {"running": {}}}]}
    else:
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}
        status = {"phase": "Succeeded" if exit_code == 0 else "Failed",
                  "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]}
    return {"metadata": {"name": name, "namespace": "ns", "labels": {"lora-operator.io/job-uid": "u"}},
            "spec": {"nodeName": "n1"}, "status": status}


def reconciled(view: JobView, pods: dict) -> tuple[list[str], list[str]]:
    """(the pods deleted, the phases written) by one reconcile."""
    kube = RecordingKube()
    lifecycle(kube, []).reconcile(view, pods, datetime.now(UTC))
    deleted = [c[2] for c in kube.calls if c[0] == "delete_pod"]
    return deleted, [c[3]["phase"] for c in kube.calls if c[0] == "patch_job_status"]


@pytest.mark.parametrize(("exit_code", "phase"), [(0, "Succeeded"), (1, "Queued")])
def test_with_none_an_ended_attempts_pod_is_kept_for_its_log(exit_code, phase):
    assert reconciled(job("Running", {"cleanPodPolicy": "None"}), {"j-a1": pod(exit_code)}) == ([], [phase])


@pytest.mark.parametrize(("exit_code", "phase"), [(0, "Succeeded"), (1, "Queued")])
def test_by_default_an_ended_attempts_pod_is_deleted(exit_code, phase):
    assert reconciled(job("Running", {}), {"j-a1": pod(exit_code)}) == (["j-a1"], [phase])
    assert reconciled(job("Running", {"cleanPodPolicy": "All"}), {"j-a1": pod(exit_code)}) == (["j-a1"], [phase])


def test_a_running_pod_past_the_deadline_is_deleted_whatever_the_policy():
    for spec in ({}, {"cleanPodPolicy": "All"}):
        deleted, phases = reconciled(job("Running", {**spec, "activeDeadlineSeconds": 1}), {"j-a1": pod(None)})
        assert deleted == ["j-a1"] and phases == ["Failed"]


def test_a_finished_job_keeps_its_ended_pods_and_loses_them_when_the_policy_becomes_all():
    kept = {"j-a1": pod(1), "j-a2": pod(0, "j-a2")}
    assert reconciled(job("Succeeded", {"cleanPodPolicy": "None"}), kept) == ([], [])
    assert reconciled(job("Succeeded", {"cleanPodPolicy": "All"}), kept) == (["j-a1", "j-a2"], [])
    assert reconciled(job("Succeeded", {}), kept) == (["j-a1", "j-a2"], [])


def test_a_finished_job_still_loses_a_running_pod_under_none():
    pods = {"j-a1": pod(0), "j-a2": pod(None, "j-a2")}
    assert reconciled(job("Succeeded", {"cleanPodPolicy": "None"}), pods) == (["j-a2"], [])


def test_an_unknown_policy_is_refused_naming_the_field():
    with pytest.raises(ValidationError, match="cleanPodPolicy"):
        JobSpec.model_validate({"cleanPodPolicy": "Running"})


def test_a_pod_frees_its_node_once_and_the_pass_reads_only_jobs_with_an_active_pod():
    stores: dict[str, list[dict]] = {}
    index = JobIndex(OwnWrites(), {}, stores, {})
    running = pod(None)
    stores["u"] = [running]
    assert index.pod_event(running, deleted=False) is False
    assert [p.name for p in index.trainer_pods()] == ["j-a1"]
    ended = pod(0)
    stores["u"] = [ended]
    assert index.pod_event(ended, deleted=False) is True  # the end frees the node: once
    assert index.pod_event(ended, deleted=False) is False
    assert index.trainer_pods() == []  # a kept pod: never read by a pass
    assert index.pod_event(ended, deleted=True) is False  # deleted later: nothing more to free
    running = pod(None, "j-a2")
    stores["u"] = [ended, running]
    index.pod_event(running, deleted=False)
    assert sorted((p.name, p.active) for p in index.trainer_pods()) == [("j-a1", False), ("j-a2", True)]
    stores["u"] = [ended]
    assert index.pod_event(running, deleted=True) is True  # deleted while active: frees its node
    assert index.trainer_pods() == []


def test_the_index_keeps_of_a_pod_what_the_outcome_reads_and_little_else():
    terminated = {"exitCode": 137, "reason": "OOMKilled", "message": "out of memory",
                  "startedAt": STARTED, "finishedAt": STARTED, "containerID": "containerd://" + "ab" * 32}
    full = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "j-a1", "namespace": "ns", "uid": "p", "resourceVersion": "9",
                         "creationTimestamp": STARTED, "labels": {"lora-operator.io/job-uid": "u"},
                         "annotations": {"a": "x" * 500}, "managedFields": [{"manager": "kubelet"}] * 5},
            "spec": {"nodeName": "n1",
                     "containers": [{"name": "trainer", "env": [{"name": "SPEC", "value": "x" * 2000}]}]},
            "status": {"phase": "Failed", "reason": "Evicted", "message": "node pressure", "hostIP": "10.0.0.1",
                       "hostIPs": [{"ip": "10.0.0.1"}], "podIP": "10.1.0.1", "podIPs": [{"ip": "10.1.0.1"}],
                       "qosClass": "Guaranteed", "startTime": STARTED,
                       "conditions": [{"type": t, "status": "True", "lastProbeTime": None, "reason": "R",
                                       "lastTransitionTime": STARTED}
                                      for t in ("PodScheduled", "Initialized", "Ready", "DisruptionTarget")],
                       "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated},
                                              "lastState": {}, "ready": False, "restartCount": 0,
                                              "image": "registry.example/trainer:1", "imageID": "sha256:" + "0" * 64,
                                              "containerID": "containerd://" + "ab" * 32, "started": False,
                                              "volumeMounts": [{"name": f"v{i}", "mountPath": f"/m{i}"}
                                                               for i in range(6)],
                                              "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
    slim = slim_pod(full)
    for node_exists in (True, False):
        assert pod_snapshot(slim, node_exists=node_exists) == pod_snapshot(full, node_exists=node_exists)
    assert trainer_pod(slim) == trainer_pod(full)
    assert len(json.dumps(slim)) < len(json.dumps(full["status"]))

"""Attempts that MultiKueue runs on a worker cluster: the Job status it mirrors back, read as the pod
the outcome classifier knows. The Job statuses are the shapes the worker's Job controller writes
(tests/cluster/test_multikueue.py shows the whole path on two real control planes)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from test_kueue_render import job as trainer_job

from lora_operator.api import ExitCode
from lora_operator.multikueue import MANAGED_BY, dispatched, on_worker, with_exit_codes, worker_node, worker_pod
from lora_operator.outcome import OutcomeKind, classify
from lora_operator.views import pod_snapshot

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
STARTED = "2026-12-06T08:59:00Z"


def mirrored(status: dict | None = None, *, suspend: bool = False, managed_by: str | None = MANAGED_BY) -> dict:
    """The attempt's Job as the manager holds it: Kueue's webhook set managedBy, MultiKueue copies
    the worker Job's status."""
    batch = trainer_job()
    batch["spec"]["suspend"] = suspend
    if managed_by:
        batch["spec"]["managedBy"] = managed_by
    batch["status"] = {"startTime": STARTED, **(status or {})}
    return batch


def outcome(batch: dict):
    return classify(pod_snapshot(worker_pod(batch), node_exists=False), NOW, unschedulable_timeout=60)


def condition(kind: str, reason: str = "", message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": STARTED}


def test_a_completed_worker_job_is_a_finished_training():
    done = mirrored({"succeeded": 1, "conditions": [condition("SuccessCriteriaMet"), condition("Complete")]})
    assert worker_pod(done)["status"]["phase"] == "Succeeded"
    assert outcome(done).kind is OutcomeKind.SUCCEEDED


def test_the_trainers_exit_code_crosses_to_the_manager_in_the_failed_message():
    """The Job controller's message for the `with_exit_codes` rule (Kubernetes 1.34's wording)."""
    rule = with_exit_codes(trainer_job())["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["containerName"] == "trainer"
    assert set(rule["onExitCodes"]["values"]) == {int(c) for c in ExitCode if 0 < c < 128}
    assert {ExitCode.BAD_DATASET, ExitCode.TRANSIENT, ExitCode.UNEXPECTED} <= set(rule["onExitCodes"]["values"])
    assert max(rule["onExitCodes"]["values"]) < 128  # 128 + n is signal n (143: SIGTERM, a preemption)
    message = ("Container trainer for pod team-a/corgi-a2-x7k2p failed with exit code 65 matching FailJob rule "
               "at index 0")
    failed = mirrored({"failed": 1, "conditions": [condition("Failed", "PodFailurePolicy", message)]})
    result = outcome(failed)
    assert result.kind is OutcomeKind.INPUT_ERROR and result.exit_code == ExitCode.BAD_DATASET
    transient = mirrored({"failed": 1, "conditions": [
        condition("Failed", "PodFailurePolicy", message.replace("code 65", "code 75"))]})
    assert outcome(transient).kind is OutcomeKind.TRANSIENT


def test_a_failed_worker_job_is_a_crash_with_the_jobs_reason():
    failed = mirrored({"failed": 1, "conditions": [
        condition("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
        condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")]})
    result = outcome(failed)  # a signal (not one of the trainer's codes): no exit code in the message
    assert result.kind is OutcomeKind.CRASHED and result.exit_code is None
    assert "backoff limit" in result.message


@pytest.mark.parametrize(("status", "phase", "kind"), [
    ({"active": 1, "ready": 1}, "Running", OutcomeKind.STILL_RUNNING),
    ({"active": 1, "ready": 0}, "Pending", None),
    ({}, "Pending", None),  # admitted, the worker's pod not made yet
])
def test_a_running_worker_job_is_a_running_or_pending_pod(status, phase, kind):
    batch = mirrored(status)
    assert worker_pod(batch)["status"]["phase"] == phase
    assert worker_pod(batch)["metadata"]["name"] == batch["metadata"]["name"]
    assert not worker_pod(batch)["spec"]  # no node of this cluster: the node-lost check never fires
    if kind:
        assert outcome(batch).kind is kind
    else:
        assert outcome(batch).kind not in (OutcomeKind.SUCCEEDED, OutcomeKind.CRASHED, OutcomeKind.DISRUPTED)


def test_a_job_kueue_suspended_again_or_gone_has_no_pod_a_disruption():
    assert worker_pod(mirrored({"active": 0}, suspend=True)) is None
    assert worker_pod(None) is None
    assert outcome(mirrored({}, suspend=True)).kind is OutcomeKind.DISRUPTED


def test_only_multikueues_jobs_are_followed_through_their_status():
    local = mirrored({"succeeded": 1, "conditions": [condition("Complete")]}, managed_by=None)
    assert not dispatched(local) and worker_pod(local) is None
    assert not dispatched(mirrored(managed_by="example.com/other"))
    assert dispatched(mirrored())


def test_the_attempts_node_names_the_worker_cluster_and_no_node_here():
    workload = {"status": {"clusterName": "worker1"}}
    assert worker_node(mirrored(), workload) == "multikueue/worker1"
    assert on_worker("multikueue/worker1")
    assert worker_node(mirrored(), {"status": {}}) is None  # not placed on a worker yet
    assert worker_node(mirrored(managed_by=None), workload) is None
    assert not on_worker("gpu-0") and not on_worker(None) and not on_worker("")

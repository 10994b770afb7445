"""Jobs admitted by Kueue: the batch/v1 Job of an attempt and the state its Workload maps to."""

from __future__ import annotations

import pytest
from test_render import CONFIG, spec  # the same job and configuration as the pod's tests

from lora_operator.api import SpecError
from lora_operator.api.conditions import Phase
from lora_operator.api.contract import COMPONENT, LABEL_COMPONENT
from lora_operator.kueue import (
    LABEL_PRIORITY_CLASS,
    LABEL_QUEUE_NAME,
    build_trainer_job,
    queue_name,
    workload_state,
)
from lora_operator.render import build_trainer_pod


def job(job_spec=None, **extra) -> dict:
    args = {"job_name": "corgi", "namespace": "team-a", "job_uid": "uid-1", "spec": job_spec or spec(),
            "queue": "gpu-queue", "gpus": 8, "attempt": 2, "resume": True, "config": CONFIG, **extra}
    return build_trainer_job(**args)


def test_queue_name_comes_from_the_spec_first_then_the_label():
    assert queue_name(spec(queueName="team-q"), {LABEL_QUEUE_NAME: "other"}) == "team-q"
    assert queue_name(spec(), {LABEL_QUEUE_NAME: "from-label"}) == "from-label"
    assert queue_name(spec(), {}) is None
    assert queue_name(spec(), None) is None


def test_queue_name_must_be_an_object_name():
    with pytest.raises(SpecError, match="queueName"):
        spec(queueName="Not A Queue")


def test_the_job_is_suspended_single_pod_labelled_and_owned_by_the_training_job():
    j = job(priority_class="high")
    assert j["apiVersion"] == "batch/v1" and j["kind"] == "Job"
    assert j["metadata"]["name"] == "corgi-a2"
    assert j["metadata"]["labels"][LABEL_QUEUE_NAME] == "gpu-queue"
    assert j["metadata"]["labels"][LABEL_PRIORITY_CLASS] == "high"
    owner = j["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("LoraTrainingJob", "uid-1", True)
    s = j["spec"]
    assert (s["suspend"], s["parallelism"], s["completions"], s["backoffLimit"]) == (True, 1, 1, 0)
    assert LABEL_PRIORITY_CLASS not in job()["metadata"]["labels"]


def test_the_pod_template_is_the_hardened_trainer_pod_without_a_fixed_node():
    template = job()["spec"]["template"]
    pod = build_trainer_pod(job_name="corgi", namespace="team-a", job_uid="uid-1", spec=spec(), node="n",
                            gpus=8, attempt=2, resume=True, config=CONFIG)
    assert template["spec"]["containers"] == pod["spec"]["containers"]
    assert template["spec"]["securityContext"] == pod["spec"]["securityContext"]
    assert template["spec"]["automountServiceAccountToken"] is False
    assert template["metadata"]["labels"][LABEL_COMPONENT] == COMPONENT
    affinity = template["spec"]["affinity"]
    assert "nodeAffinity" not in affinity  # Kueue's flavor and the scheduler choose the node
    anti = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["labelSelector"]["matchLabels"] == {LABEL_COMPONENT: COMPONENT}
    assert anti["namespaceSelector"] == {}
    limits = template["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {CONFIG.gpu_resource: "8"}


def test_node_selector_and_grace_period_reach_the_pod_template():
    j = job(spec(placement={"nodeSelector": {"pool": "a100"}}), termination_grace_seconds=90)
    pod_spec = j["spec"]["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"pool": "a100"}
    assert pod_spec["terminationGracePeriodSeconds"] == 90
    assert "terminationGracePeriodSeconds" not in job()["spec"]["template"]["spec"]


def condition(kind, status, reason="", message=""):
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


def workload(*conditions):
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload", "status": {"conditions": list(conditions)}}


def test_no_workload_yet_is_queued():
    state = workload_state(None)
    assert (state.phase, state.disrupted) == (Phase.QUEUED, False)


def test_waiting_for_quota_is_queued_with_kueues_reason():
    w = workload(condition("QuotaReserved", "False", "Pending", "insufficient quota for nvidia.com/gpu"))
    state = workload_state(w)
    assert state.phase == Phase.QUEUED
    assert (state.reason, state.message) == ("Pending", "insufficient quota for nvidia.com/gpu")
    assert [c.type for c in state.conditions] == ["KueueQuotaReserved"]
    assert state.disrupted is False


def test_admitted_and_unsuspended_is_running():
    w = workload(condition("QuotaReserved", "True", "QuotaReserved"), condition("Admitted", "True", "Admitted"))
    assert workload_state(w, job_suspended=False).phase == Phase.RUNNING
    # Admitted but the Job still suspended: Kueue has not started it yet
    assert workload_state(w, job_suspended=True).phase == Phase.QUEUED


def test_eviction_is_a_disruption_queued_with_kueues_reason():
    w = workload(condition("QuotaReserved", "False", "Pending"), condition("Admitted", "False", "NoReservation"),
                 condition("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: x)"),
                 condition("Requeued", "True", "Preempted"))
    state = workload_state(w, job_suspended=True)
    assert state.phase == Phase.QUEUED
    assert state.disrupted is True
    assert state.reason == "Preempted"
    assert "accommodate" in state.message
    types = {c.type: c.status for c in state.conditions}
    assert types == {"KueueQuotaReserved": "False", "KueueAdmitted": "False", "KueueEvicted": "True",
                     "KueueRequeued": "True"}


def test_queue_name_is_frozen_after_admission_by_the_crd():
    from lora_operator.crdgen.rules import immutability_rules

    assert "queueName" in immutability_rules()[0]["rule"]

"""Jobs admitted by Kueue: the batch/v1 Job of an attempt and the state its Workload maps to."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_helm_values_wired import operator_config
from test_render import CONFIG, spec  # the same job and configuration as the pod's tests

from lora_operator.api import SpecError
from lora_operator.api.conditions import Phase
from lora_operator.api.contract import COMPONENT, LABEL_COMPONENT
from lora_operator.api.status import Progress
from lora_operator.kueue import (
    ADMISSION_GATE,
    ADMISSION_GATED_BY,
    LABEL_PRIORITY_CLASS,
    LABEL_QUEUE_NAME,
    build_trainer_job,
    evicted_state,
    gated,
    queue_name,
    without_gate,
    workload_state,
)
from lora_operator.policy import refusal
from lora_operator.render import build_trainer_pod
from testground import chart
from testground.chart import granted_by, one, render


def job(job_spec=None, **extra) -> dict:
    args = {"job_name": "corgi", "namespace": "team-a", "job_uid": "uid-1", "spec": job_spec or spec(),
            "queue": "gpu-queue", "gpus": 8, "attempt": 2, "resume": True, "config": CONFIG, **extra}
    return build_trainer_job(**args)

helm = chart.helm  # the chart tests' fixture: the test ground's helm binary


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
    config = CONFIG.model_copy(update={"trainer_termination_grace_seconds": 90})
    j = job(spec(placement={"nodeSelector": {"pool": "a100"}}), config=config)
    pod_spec = j["spec"]["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"pool": "a100"}
    assert pod_spec["terminationGracePeriodSeconds"] == 90
    assert job()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    assert "nodeSelector" not in job()["spec"]["template"]["spec"]


def test_the_grace_period_follows_the_measured_save_time():
    """A save measured at 40 s (one step at 0.5 steps/s) asks 2 x 40 + 2 + 30 = 112 s, over the 60 s floor."""
    config = CONFIG.model_copy(update={"trainer_termination_grace_seconds": 60})
    measured = Progress(step=7, state_save_seconds=40.0, steps_per_second=0.5)
    assert job(config=config, progress=measured)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 112
    quick = Progress(step=7, state_save_seconds=2.0, steps_per_second=5.0)  # under the floor: the floor
    assert job(config=config, progress=quick)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    unmeasured = Progress(step=7)
    assert job(config=config, progress=unmeasured)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    huge = Progress(step=7, state_save_seconds=5000.0)
    assert job(config=config, progress=huge)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 3600
    # the operator's own pods the same
    pod = build_trainer_pod(job_name="corgi", namespace="team-a", job_uid="uid-1", spec=spec(), node="n",
                            gpus=8, attempt=2, resume=True, config=config, progress=measured)
    assert pod["spec"]["terminationGracePeriodSeconds"] == 112


def test_the_job_is_created_with_the_operators_admission_gate():
    j = job()
    assert j["metadata"]["annotations"] == {ADMISSION_GATED_BY: ADMISSION_GATE}
    assert gated(j)
    assert not gated({"metadata": {"annotations": {ADMISSION_GATED_BY: "example.com/other"}}})
    assert not gated({"metadata": {}})
    assert without_gate(ADMISSION_GATE, ADMISSION_GATE) is None  # the annotation goes with its last gate
    others = without_gate(f"example.com/a, {ADMISSION_GATE},example.com/b", ADMISSION_GATE)
    assert others == "example.com/a,example.com/b"


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


def test_a_finished_workload_holds_no_quota():
    w = workload(condition("QuotaReserved", "True", "QuotaReserved"), condition("Admitted", "True", "Admitted"),
                 condition("Finished", "True", "Succeeded", "Job finished successfully"))
    state = workload_state(w, job_suspended=False)
    assert state.finished and not state.holds_quota and not state.disrupted
    running = workload_state(workload(condition("QuotaReserved", "True"), condition("Admitted", "True")), False)
    assert running.holds_quota and not running.finished


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
    assert state.eviction.reason == "Preempted"
    # the job's status keeps the mirror once the Job (and its Workload) went: the eviction is read back
    again = evicted_state(list(state.conditions))
    assert (again.reason, again.disrupted, again.eviction.message) == ("Preempted", True, state.message)
    assert evicted_state([c for c in state.conditions if c.type != "KueueEvicted"]) is None


def test_a_workload_admitted_again_still_shows_its_eviction():
    """Kueue turns Evicted False ("Previously: ...") when it reserves quota again: the eviction is still known."""
    w = workload(condition("QuotaReserved", "True", "QuotaReserved"), condition("Admitted", "True", "Admitted"),
                 condition("Evicted", "False", "QuotaReserved", "Previously: Preempted to accommodate a workload"))
    state = workload_state(w, job_suspended=False)
    assert state.phase == Phase.RUNNING and not state.disrupted
    assert state.eviction is not None and state.eviction.status == "False"
    assert workload_state(workload(condition("QuotaReserved", "True")), False).eviction is None


def test_queue_name_is_frozen_after_admission_by_the_crd():
    from lora_operator.crdgen.rules import immutability_rules

    assert "queueName" in immutability_rules()[0]["rule"]


def test_the_example_job_names_the_example_local_queue_and_priority_class():
    import yaml

    examples = Path(__file__).resolve().parents[2] / "examples"
    job_doc = yaml.safe_load((examples / "kueue-job.yaml").read_text())
    queues = {d["kind"]: d for d in yaml.safe_load_all((examples / "kueue" / "queues.yaml").read_text())}
    local_queue = queues["LocalQueue"]["metadata"]["name"]
    assert queue_name(spec(**job_doc["spec"]), job_doc["metadata"]["labels"]) == local_queue
    assert queues["LocalQueue"]["metadata"]["namespace"] == job_doc["metadata"]["namespace"]
    assert queues["LocalQueue"]["spec"]["clusterQueue"] == queues["ClusterQueue"]["metadata"]["name"]
    assert job_doc["metadata"]["labels"][LABEL_PRIORITY_CLASS] == queues["WorkloadPriorityClass"]["metadata"]["name"]
    flavors = queues["ClusterQueue"]["spec"]["resourceGroups"][0]["flavors"]
    assert flavors[0]["name"] == queues["ResourceFlavor"]["metadata"]["name"]
    assert any(r["name"] == CONFIG.gpu_resource for r in flavors[0]["resources"])


def test_the_chart_grants_jobs_workloads_and_positions_only_with_kueue_enabled(helm: Path) -> None:
    kueue = {("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},  # patch: the gate
             ("kueue.x-k8s.io", "workloads"): {"get", "list", "watch"},
             ("visibility.kueue.x-k8s.io", "localqueues/pendingworkloads"): {"get"}}  # queuePosition
    off = granted_by(one(render(helm), "ClusterRole")["rules"])
    assert not kueue.keys() & off.keys()
    on_docs = render(helm, "kueue.enabled=true")
    on = granted_by(one(on_docs, "ClusterRole")["rules"])
    assert {k: on[k] for k in kueue} == kueue
    assert operator_config(on_docs).kueue_enabled is True
    assert operator_config(render(helm)).kueue_enabled is False
    # with one watched namespace, Jobs and Workloads are granted there only
    scoped = render(helm, "kueue.enabled=true", "operator.watchNamespace=team-a")
    assert not kueue.keys() & granted_by(one(scoped, "ClusterRole")["rules"]).keys()
    assert kueue.keys() <= granted_by(one(scoped, "Role")["rules"]).keys()


def test_the_charts_grace_period_reaches_the_trainer_pod(helm: Path) -> None:
    config = operator_config(render(helm, "trainer.terminationGracePeriodSeconds=300"))
    pod = build_trainer_pod(job_name="corgi", namespace="team-a", job_uid="uid-1", spec=spec(), node="n",
                            gpus=8, attempt=1, resume=False, config=config)
    assert pod["spec"]["terminationGracePeriodSeconds"] == 300


def test_a_queue_name_is_refused_while_kueue_is_off_and_allowed_once_on():
    refused = refusal(spec(queueName="gpu-queue"), CONFIG)
    assert refused is not None and refused[0] == "NotAllowed"
    assert refused[1].startswith("spec.queueName:") and "LORA_KUEUE_ENABLED" in refused[1]
    assert refusal(spec(queueName="gpu-queue"), CONFIG.model_copy(update={"kueue_enabled": True})) is None
    assert refusal(spec(), CONFIG) is None


def test_the_workload_goes_onto_the_jobs_status_queued_with_kueues_reason():
    from datetime import UTC, datetime

    from lora_operator.api import JobStatus
    from lora_operator.status_transitions import kueue_workload, queued

    now = datetime(2026, 1, 1, tzinfo=UTC)
    waiting = queued(JobStatus(), position=None, now=now)
    pending = workload_state(workload(condition("QuotaReserved", "False", "Pending", "insufficient quota")))
    status = kueue_workload(waiting, pending, now=now)
    assert status.phase == Phase.QUEUED
    admitted = next(c for c in status.conditions if c.type == "Admitted")
    assert (admitted.status, admitted.reason) == ("False", "Pending")
    assert status.message == "Kueue: insufficient quota"
    assert mirror(status) == {"KueueQuotaReserved": "False"}
    # admitted: the mirror follows, the phase is the pod start's to move; a dropped condition goes
    running = workload_state(workload(condition("QuotaReserved", "True", "QuotaReserved"),
                                      condition("Admitted", "True", "Admitted")), job_suspended=False)
    status = kueue_workload(status, running, now=now)
    assert mirror(status) == {"KueueQuotaReserved": "True", "KueueAdmitted": "True"}
    assert status.phase == Phase.QUEUED
    # evicted: Queued again with Kueue's reason
    evicted = workload_state(workload(condition("QuotaReserved", "False", "Pending"),
                                      condition("Evicted", "True", "Preempted", "Preempted to accommodate x")))
    status = kueue_workload(status, evicted, now=now)
    assert (status.phase, status.message) == (Phase.QUEUED, "Kueue: Preempted to accommodate x")
    assert next(c for c in status.conditions if c.type == "Admitted").reason == "Preempted"
    assert mirror(status) == {"KueueQuotaReserved": "False", "KueueEvicted": "True"}


def mirror(status) -> dict[str, str]:
    return {c.type: c.status for c in status.conditions if c.type.startswith("Kueue")}

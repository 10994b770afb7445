"""Operator restarts, deadlines and TTLs on the real local control plane."""

from __future__ import annotations

import pytest
from test_operator import end_pod, get_job, job, ns, operator, running_pod, trainer_pods, wait_phase  # noqa: F401

from testground.operator import OperatorProcess

pytestmark = pytest.mark.cluster


def test_operator_killed_mid_run_loses_and_duplicates_nothing(ground, operator, ns, tmp_path):  # noqa: F811
    ground.add_gpu_nodes(1, gpus=2, gpu_type="restart", prefix="restart")
    ground.apply({**job("survivor", "restart"), "metadata": {"name": "survivor", "namespace": ns}})
    pod = running_pod(ground, ns, "survivor")
    operator.kill()
    end_pod(ground, ns, pod["metadata"]["name"], 0)  # the pod ends while no operator runs
    fresh = OperatorProcess(ground, tmp_path / "operator2.log").start()
    try:
        wait_phase(ground, fresh, ns, "survivor", "Succeeded")
        status = get_job(ground, ns, "survivor")["status"]
        assert [a["number"] for a in status["attempts"]] == [1]
        assert len([p for p in trainer_pods(ground, ns)
                    if p["metadata"]["labels"]["lora-operator.io/job"] == "survivor"]) <= 1
    finally:
        fresh.stop()
        operator.start()  # the module's operator again, for the tests after this one


def test_active_deadline_fails_a_running_job_and_removes_its_pod(ground, operator, ns):  # noqa: F811
    ground.add_gpu_nodes(1, gpus=1, gpu_type="deadline", prefix="deadline")
    ground.apply({**job("slow", "deadline", activeDeadlineSeconds=3), "metadata": {"name": "slow", "namespace": ns}})
    running_pod(ground, ns, "slow")
    wait_phase(ground, operator, ns, "slow", "Failed", timeout=60)
    failed = next(c for c in get_job(ground, ns, "slow")["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    ground.wait_for(lambda: not [p for p in trainer_pods(ground, ns) if not p["metadata"].get("deletionTimestamp")],
                    timeout=30, what="the trainer pod removed")


def test_finished_job_is_deleted_after_its_ttl(ground, operator, ns):  # noqa: F811
    ground.add_gpu_nodes(1, gpus=1, gpu_type="ttl", prefix="ttl")
    ground.apply({**job("brief", "ttl", ttlSecondsAfterFinished=2), "metadata": {"name": "brief", "namespace": ns}})
    end_pod(ground, ns, running_pod(ground, ns, "brief")["metadata"]["name"], 0)
    ground.wait_for(lambda: ground.kubectl("get", "ltj", "brief", "-n", ns, check=False).returncode != 0,
                    timeout=60, what="the job deleted after its TTL")


def _sample(text: str, name: str, labels: str = "") -> float:
    line = next((row for row in text.splitlines() if row.startswith(f"{name}{labels} ") or
                 (not labels and row.startswith(f"{name} "))), None)
    return float(line.split()[-1]) if line else 0.0


def test_metrics_series_move_as_jobs_move(ground, operator, ns):  # noqa: F811
    ground.add_gpu_nodes(1, gpus=1, gpu_type="metrics", prefix="metrics")
    ground.wait_for(lambda: "lora_operator_admissions_total" in operator.metrics(), timeout=30, what="/metrics up")
    before = operator.metrics()
    ground.apply({**job("counted", "metrics"), "metadata": {"name": "counted", "namespace": ns}})
    end_pod(ground, ns, running_pod(ground, ns, "counted")["metadata"]["name"], 0)
    wait_phase(ground, operator, ns, "counted", "Succeeded")
    ground.wait_for(lambda: _sample(operator.metrics(), "lora_operator_jobs", '{phase="Succeeded"}')
                    > _sample(before, "lora_operator_jobs", '{phase="Succeeded"}'), timeout=30,
                    what="lora_operator_jobs{phase=Succeeded} to grow")
    after = operator.metrics()
    assert _sample(after, "lora_operator_admissions_total") == _sample(before, "lora_operator_admissions_total") + 1
    assert _sample(after, "lora_operator_admission_latency_seconds_count") > _sample(
        before, "lora_operator_admission_latency_seconds_count")
    assert 'lora_operator_gpu_nodes{state="free"}' in after
    # the running operator probes its event loop (4 a second): the series moves on its own
    assert _sample(after, "lora_operator_event_loop_lag_seconds_count") > _sample(
        before, "lora_operator_event_loop_lag_seconds_count")


def test_pod_stuck_unschedulable_is_queued_again_once_then_fails_with_the_reason(ground, operator, ns):  # noqa: F811
    from testground import gpu_node

    # A GPU node that kube-scheduler refuses (room for no pod) while it looks free to the queue:
    # the trainer pod stays Pending/Unschedulable past LORA_UNSCHEDULABLE_TIMEOUT (20 s here).
    node = gpu_node("nopods-0", gpus=1, gpu_type="nopods")
    for key in ("allocatable", "capacity"):
        node["status"][key]["pods"] = "0"
    ground.apply(node)
    ground.kubectl("wait", "--for=condition=Ready", "--timeout=60s", "node/nopods-0")
    ground.apply({**job("stuck", "nopods"), "metadata": {"name": "stuck", "namespace": ns}})
    wait_phase(ground, operator, ns, "stuck", "Failed", timeout=150)
    status = get_job(ground, ns, "stuck")["status"]
    assert [a["reason"] for a in status["attempts"]] == ["Unschedulable", "Unschedulable"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Unschedulable"
    ground.kubectl("delete", "node", "nopods-0")


def test_conditions_carry_the_generation_they_were_set_at_and_follow_a_spec_change(ground, operator, ns):  # noqa: F811
    # No node of this type: the job waits Queued, and a spec change (suspend) makes the next write.
    ground.apply({**job("observed", "observed-none"), "metadata": {"name": "observed", "namespace": ns}})
    wait_phase(ground, operator, ns, "observed", "Queued")
    first = get_job(ground, ns, "observed")
    assert first["metadata"]["generation"] == 1
    conditions = {c["type"]: c.get("observedGeneration") for c in first["status"]["conditions"]}
    assert "Admitted" in conditions and set(conditions.values()) == {1}, conditions
    assert first["status"]["observedGeneration"] == 1
    ground.kubectl("patch", "ltj", "observed", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_phase(ground, operator, ns, "observed", "Suspended")
    suspended = get_job(ground, ns, "observed")
    assert suspended["metadata"]["generation"] == 2
    conditions = {c["type"]: c.get("observedGeneration") for c in suspended["status"]["conditions"]}
    assert (conditions["Admitted"], conditions["Suspended"]) == (2, 2), conditions  # set at the new generation
    assert suspended["status"]["observedGeneration"] == 2

"""The operator with LORA_KUEUE_ENABLED against the real Kueue manager: a job's attempt becomes a Job
in its LocalQueue that Kueue admits, a job without quota shows Kueue's reason and place, and Kueue
admits nothing until the operator's dataset check passed."""

from __future__ import annotations

import json

import pytest

from cluster.kueue.kueuelib import QUEUE, cluster_queue, get_in, local_queue, workload_in
from lora_operator.api import API_VERSION, LoraTrainingJob
from lora_operator.kueue import ADMISSION_GATED_BY, workload_state
from lora_operator.render import pod_name

pytestmark = pytest.mark.cluster


def test_the_operator_runs_a_queued_job_through_kueue_and_shows_kueues_reason(ground, kueue, tmp_path):
    """LORA_KUEUE_ENABLED: the operator makes a job's attempt a Job in its LocalQueue; Kueue admits it and
    the job runs to Succeeded on its pod (kwok ends it). A job in a queue without quota stays Queued with
    Kueue's reason and the Workload's conditions on its status, and the operator's own queue skips it."""
    from testground.operator import KWOK_DATASET, KWOK_MODEL, OperatorProcess, run_kubectl_json, storage_secret

    ns = "kq-op"
    ground.kubectl("create", "namespace", ns)
    ground.apply(storage_secret(ground, ns))
    ground.apply([cluster_queue("kq-none", "kq-gpu", 0), local_queue(QUEUE, ns, "kq-training"),
                  local_queue("no-quota", ns, "kq-none")])

    def ltj(name: str, queue: str, by_label: bool = False) -> dict:
        spec = {"baseModel": {"family": "sd15", "uri": KWOK_MODEL}, "dataset": {"uri": KWOK_DATASET},
                "output": {"uri": "s3://loras/"}, **({} if by_label else {"queueName": queue})}
        labels = {"kueue.x-k8s.io/queue-name": queue} if by_label else {}
        return {"apiVersion": API_VERSION, "kind": LoraTrainingJob.KIND,
                "metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": spec}

    def status(name: str) -> dict:
        return run_kubectl_json(ground, "get", "ltj", "-n", ns, name).get("status") or {}

    op = OperatorProcess(ground, tmp_path / "operator.log", extra_env={"LORA_KUEUE_ENABLED": "1"}).start()
    try:
        ground.apply([ltj("through", QUEUE), ltj("starved", "no-quota", by_label=True)])
        try:
            ground.wait_for(lambda: status("through").get("phase") == "Succeeded", timeout=120,
                            what="the Kueue job Succeeded", interval=1)
            ground.wait_for(lambda: any(c["type"] == "KueueQuotaReserved" for c in status("starved").get(
                "conditions") or []), timeout=60, what="the starved job's Workload mirrored", interval=1)
            ground.wait_for(lambda: status("starved").get("queuePosition"), timeout=60,
                            what="the starved job's place in Kueue's queue", interval=1)
        except TimeoutError:
            raise AssertionError(f"{json.dumps(status('through'))[:2000]}\n{json.dumps(status('starved'))[:2000]}"
                                 f"\n--- operator log ---\n{op.tail(60)}") from None
        done = status("through")
        job = run_kubectl_json(ground, "get", "job", pod_name("through", 1), "-n", ns)
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
        assert job["metadata"]["ownerReferences"][0]["name"] == "through"
        attempt = done["attempts"][0]
        # the Job controller's pod, not one the operator placed: its name carries the Job's suffix
        assert attempt["pod"].startswith(pod_name("through", 1) + "-") and attempt["node"].startswith("kq-")
        assert attempt["reason"] == "TrainingComplete"
        assert "KueueAdmitted" in {c["type"] for c in done["conditions"]}

        starved = status("starved")
        assert starved["phase"] == "Queued"
        assert starved["resolvedSpec"]["queueName"] == "no-quota"  # from the label
        admitted = next(c for c in starved["conditions"] if c["type"] == "Admitted")
        reserved = next(c for c in starved["conditions"] if c["type"] == "KueueQuotaReserved")
        assert admitted["status"] == reserved["status"] == "False"
        assert admitted["reason"] == reserved["reason"] == "Pending"
        assert "insufficient" in reserved["message"] or "quota" in reserved["message"], reserved
        # its place is Kueue's (from its visibility API), not the operator's queue's, and the message says so
        assert starved["message"] == (f"Kueue: {reserved['message']}; queuePosition 1 is Kueue's (its ClusterQueue's "
                                      "order; 1 in LocalQueue no-quota)")
        assert not starved.get("attempts") and starved.get("queuePosition") == 1
        held = run_kubectl_json(ground, "get", "job", pod_name("starved", 1), "-n", ns)
        assert held["spec"]["suspend"] is True and held["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "no-quota"
        # no pod of it anywhere (the finished job's pod is removed as any finished job's is; a deleted
        # pod of a Job goes once the Job controller has counted it, a moment later)
        ground.wait_for(lambda: get_in(ground, ns, "pods") == [], timeout=60, what="no pod left", interval=1)
    finally:
        op.stop()
        ground.kubectl("delete", "namespace", ns, "--wait=false")


def test_kueue_does_not_admit_a_job_until_its_dataset_check_passed(ground, kueue, tmp_path):
    """A job resolved while storage could not answer is Queued, but its Job keeps the operator's
    kueue.x-k8s.io/admission-gated-by gate: Kueue makes its Workload and admits nothing while storage
    is down; once the dataset check passes the operator removes the gate and Kueue admits it."""
    from testground.operator import OperatorProcess, kwok_job, run_kubectl_json, storage_secret

    ns = "kq-gate"
    ground.kubectl("create", "namespace", ns)
    ground.apply(storage_secret(ground, ns))
    ground.apply(local_queue(QUEUE, ns, "kq-training"))

    def status() -> dict:
        return run_kubectl_json(ground, "get", "ltj", "-n", ns, "gated").get("status") or {}

    op = OperatorProcess(ground, tmp_path / "operator.log", extra_env={"LORA_KUEUE_ENABLED": "1"}).start()
    job = kwok_job("gated", "h100", namespace=ns, queueName=QUEUE)
    job["spec"].pop("placement")
    try:
        ground.minio.stop()
        try:
            ground.apply(job)
            ground.wait_for(lambda: status().get("conditions") and next(
                (c for c in status()["conditions"] if c["type"] == "Admitted"), {}).get("reason") == "AdmissionGated",
                timeout=120, what="the job held at the gate", interval=1)
            batch = run_kubectl_json(ground, "get", "job", pod_name("gated", 1), "-n", ns)
            assert batch["metadata"]["annotations"][ADMISSION_GATED_BY] == "lora-operator.io/inputs"

            def seen_gated() -> bool:  # Kueue had quota to admit it at once: it says why it does not
                held = workload_in(ground, ns, batch["metadata"]["uid"]) or {}
                return any(c["type"] == "QuotaReserved" and c.get("reason") == "AdmissionGated"
                           for c in (held.get("status") or {}).get("conditions") or [])

            ground.wait_for(seen_gated, timeout=60, what="Kueue's Workload held AdmissionGated")
            held = workload_in(ground, ns, batch["metadata"]["uid"])
            assert held["metadata"]["annotations"][ADMISSION_GATED_BY] == "lora-operator.io/inputs"
            assert workload_state(held).holds_quota is False, held.get("status")
            assert "lora-operator.io/inputs" in workload_state(held).message
            assert run_kubectl_json(ground, "get", "job", pod_name("gated", 1), "-n", ns)["spec"]["suspend"] is True
            assert status()["phase"] == "Queued" and "until the dataset can be checked" in status()["message"]
        finally:
            ground.minio.start()
        ground.wait_for(lambda: status().get("phase") == "Succeeded", timeout=120, what="admitted and Succeeded",
                        interval=1)
        events = ground.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=gated").stdout
        assert "released to Kueue" in events
    except (TimeoutError, AssertionError) as err:
        raise AssertionError(f"{err}\n{json.dumps(status())[:2000]}\n--- operator log ---\n{op.tail(60)}") from None
    finally:
        op.stop()
        ground.kubectl("delete", "namespace", ns, "--wait=false")

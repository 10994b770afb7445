"""The operator on the real local control plane: queueing, one job per GPU node, outcomes.

kwok plays the kubelet: it runs the trainer pods the operator creates; the tests end them the
way a kubelet would (status subresource: Succeeded, Failed with an exit code, evicted).
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from lora_operator.api.contract import PROGRESS_KEY
from lora_operator.api.reports import ProgressReport
from lora_operator.controller import ESTIMATE_SECONDS
from lora_operator.status_transitions import rfc3339
from lora_operator.views import parse_time
from testground.operator import OperatorProcess, install_crds, kwok_job, run_kubectl_json
from testground.podstatus import report, terminated
from testground.tenant import tenant

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator(ground, tmp_path_factory):
    install_crds(ground)
    op = OperatorProcess(ground, tmp_path_factory.mktemp("operator") / "operator.log").start()
    yield op
    op.stop()


@pytest.fixture
def ns(ground, request):
    with tenant(ground, f"t-{uuid.uuid4().hex[:8]}") as t:
        yield t.namespace


def job(name: str, gpu_type: str, priority: int = 0, **spec) -> dict:
    retry = {"maxRetries": 1, "backoffSeconds": 1, "maxBackoffSeconds": 2}
    return kwok_job(name, gpu_type, **{"priority": priority, "retryPolicy": retry, **spec})

def get_job(ground, ns: str, name: str) -> dict:
    return run_kubectl_json(ground, "get", "ltj", "-n", ns, name)


def phase(ground, ns: str, name: str) -> str | None:
    return get_job(ground, ns, name).get("status", {}).get("phase")


def wait_phase(ground, operator, ns, name, wanted, timeout=60):
    try:
        ground.wait_for(lambda: phase(ground, ns, name) == wanted, timeout=timeout, what=f"{name} {wanted}")
    except TimeoutError:
        raise AssertionError(f"{name}: phase {phase(ground, ns, name)}, wanted {wanted}\n"
                             f"{json.dumps(get_job(ground, ns, name).get('status'), indent=1)[:3000]}\n"
                             f"--- operator log ---\n{operator.tail()}") from None


def trainer_pods(ground, ns: str) -> list[dict]:
    return run_kubectl_json(ground, "get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=trainer")["items"]


def end_pod(ground, ns: str, pod: str, exit_code: int, reason: str | None = None) -> None:
    """Ends a trainer pod as its kubelet would: terminated container, pod phase from the exit code."""
    report(ground, ns, pod, terminated(exit_code, reason))


def running_pod(ground, ns: str, job_name: str) -> dict:
    def find():
        pods = [p for p in trainer_pods(ground, ns)
                if p["metadata"]["labels"]["lora-operator.io/job"] == job_name
                and p["status"].get("phase") == "Running"]
        return pods[0] if pods else None
    ground.wait_for(lambda: find() is not None, timeout=60, what=f"a running trainer pod of {job_name}")
    return find()


def test_job_goes_queued_running_succeeded_as_its_pod_completes(ground, operator, ns):
    ground.add_gpu_nodes(1, gpus=4, gpu_type="life", prefix="life")
    ground.apply({**job("one", "life"), "metadata": {"name": "one", "namespace": ns}})
    pod = running_pod(ground, ns, "one")
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert pod["spec"]["automountServiceAccountToken"] is False
    wait_phase(ground, operator, ns, "one", "Running")
    end_pod(ground, ns, pod["metadata"]["name"], 0)
    wait_phase(ground, operator, ns, "one", "Succeeded")
    status = get_job(ground, ns, "one")["status"]
    assert status["attempts"][0]["reason"] == "TrainingComplete"
    assert status["specHash"] and status["resolvedSpec"]["network"]["dim"] == 16
    ground.kubectl("wait", "--for=condition=Succeeded", "ltj/one", "-n", ns, "--timeout=10s")
    fields = run_kubectl_json(ground, "get", "ltj", "-n", ns, "one", "--show-managed-fields")["metadata"]
    status_entries = [m for m in fields["managedFields"] if m.get("subresource") == "status"]
    assert {m["manager"] for m in status_entries} == {"lora-operator"}
    # resolvedSpec is owned whole (x-kubernetes-map-type: atomic), not leaf by leaf
    assert status_entries[0]["fieldsV1"]["f:status"]["f:resolvedSpec"] == {}

    def reasons() -> set[str]:
        events = run_kubectl_json(ground, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=one")
        return {e["reason"] for e in events["items"]}
    ground.wait_for(lambda: {"Queued", "NodeAssigned", "PodRunning", "TrainingComplete"} <= reasons(), timeout=30,
                    what=f"an Event for each transition (have {reasons()})\n{operator.tail()}")
    events = run_kubectl_json(ground, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=one")
    # `From` in kubectl describe: the operator, not the framework it is built on
    assert {(e["source"]["component"], e["reportingComponent"]) for e in events["items"]} == {
        ("lora-operator", "lora-operator")}


def test_three_nodes_ten_jobs_never_share_a_node_and_drain_in_priority_order(ground, operator, ns):
    priorities = [0, 5, 0, 9, 1, 0, 5, 2, 0, 7]
    for i, prio in enumerate(priorities):
        ground.apply({**job(f"j{i}", "drain", prio), "metadata": {"name": f"j{i}", "namespace": ns}})
    for i in range(len(priorities)):
        wait_phase(ground, operator, ns, f"j{i}", "Queued")
    assert get_job(ground, ns, "j3")["status"]["queuePosition"] == 1  # priority 9 heads the queue
    nodes = ground.add_gpu_nodes(3, gpus=8, gpu_type="drain", prefix="drain")
    expected = [f"j{i}" for i in sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))]
    seen: list[str] = []  # jobs in the order their trainer pods appeared
    finished: set[str] = set()

    def current() -> list[dict]:
        return [p for p in trainer_pods(ground, ns) if p["metadata"]["labels"]["lora-operator.io/job"] not in finished]

    while len(finished) < len(priorities):
        running = min(3, len(priorities) - len(finished))
        ground.wait_for(lambda n=running: len([p for p in current() if p["status"].get("phase") == "Running"]) == n,
                        timeout=60, what=f"{running} running trainer pods")
        pods = current()
        bound = [p["spec"].get("nodeName") for p in pods]
        assert len(bound) == len(set(bound)), f"two trainer pods on one node: {bound}"
        assert set(bound) <= set(nodes)
        new = sorted((p["metadata"]["labels"]["lora-operator.io/job"] for p in pods
                      if p["metadata"]["labels"]["lora-operator.io/job"] not in seen), key=expected.index)
        seen.extend(new)
        oldest = next(p for p in pods if p["metadata"]["labels"]["lora-operator.io/job"] == seen[len(finished)])
        end_pod(ground, ns, oldest["metadata"]["name"], 0)
        finished.add(seen[len(finished)])
    # the first three take the three nodes together; then each freed node takes the highest
    # waiting priority, FIFO among equals
    assert set(seen[:3]) == set(expected[:3])
    assert seen[3:] == expected[3:]


def test_crash_is_retried_and_told_to_resume_then_fails_when_retries_are_exhausted(ground, operator, ns):
    ground.add_gpu_nodes(1, gpus=2, gpu_type="crash", prefix="crash")
    ground.apply({**job("crashy", "crash"), "metadata": {"name": "crashy", "namespace": ns}})
    first = running_pod(ground, ns, "crashy")
    end_pod(ground, ns, first["metadata"]["name"], 1)

    def second_attempt():
        pods = [p for p in trainer_pods(ground, ns) if p["metadata"]["labels"].get("lora-operator.io/attempt") == "2"]
        return pods[0] if pods and pods[0]["status"].get("phase") == "Running" else None
    ground.wait_for(lambda: second_attempt() is not None, timeout=60, what="attempt 2 running")
    env = {e["name"]: e.get("value") for e in second_attempt()["spec"]["containers"][0]["env"]}
    assert env["LORA_RESUME"] == "1" and env["LORA_ATTEMPT"] == "2"
    end_pod(ground, ns, second_attempt()["metadata"]["name"], 137, "OOMKilled")
    wait_phase(ground, operator, ns, "crashy", "Failed")
    status = get_job(ground, ns, "crashy")["status"]
    assert [a["reason"] for a in status["attempts"]] == ["Crashed", "Crashed"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RetriesExhausted"


def test_input_error_exit_code_fails_at_once_with_its_reason(ground, operator, ns):
    ground.add_gpu_nodes(1, gpus=1, gpu_type="input", prefix="input")
    ground.apply({**job("bad-data", "input"), "metadata": {"name": "bad-data", "namespace": ns}})
    pod = running_pod(ground, ns, "bad-data")
    end_pod(ground, ns, pod["metadata"]["name"], 65)
    wait_phase(ground, operator, ns, "bad-data", "Failed")
    status = get_job(ground, ns, "bad-data")["status"]
    assert len(status["attempts"]) == 1
    assert "BAD_DATASET" in next(c for c in status["conditions"] if c["type"] == "Failed")["message"]


def test_evicted_pod_is_retried_without_counting(ground, operator, ns):
    ground.add_gpu_nodes(1, gpus=1, gpu_type="evict", prefix="evict")
    ground.apply({**job("evictee", "evict", retryPolicy={"maxRetries": 0}), "metadata": {"name": "evictee",
                                                                                         "namespace": ns}})
    pod = running_pod(ground, ns, "evictee")
    ground.kubectl("patch", "pod", "-n", ns, pod["metadata"]["name"], "--subresource=status", "--type=merge", "-p",
                   json.dumps({"status": {"phase": "Failed", "reason": "Evicted", "message": "node pressure",
                                          "conditions": [{"type": "DisruptionTarget", "status": "True",
                                                          "reason": "TerminationByKubelet"}]}}))
    ground.wait_for(lambda: any(p["metadata"]["labels"].get("lora-operator.io/attempt") == "2"
                                for p in trainer_pods(ground, ns)), timeout=60, what="attempt 2 after eviction")
    status = get_job(ground, ns, "evictee")["status"]
    assert status.get("retries", 0) == 0
    assert status["attempts"][0]["counted"] is False


def test_suspend_removes_the_pod_and_resume_queues_again(ground, operator, ns):
    ground.add_gpu_nodes(1, gpus=1, gpu_type="susp", prefix="susp")
    ground.apply({**job("pausable", "susp"), "metadata": {"name": "pausable", "namespace": ns}})
    running_pod(ground, ns, "pausable")
    ground.kubectl("patch", "ltj", "pausable", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_phase(ground, operator, ns, "pausable", "Suspended")
    ground.wait_for(lambda: not [p for p in trainer_pods(ground, ns) if not p["metadata"].get("deletionTimestamp")],
                    timeout=30, what="the trainer pod removed")
    ground.kubectl("patch", "ltj", "pausable", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    running_pod(ground, ns, "pausable")


def test_missing_template_and_missing_secret_fail_with_reasons(ground, operator, ns):
    ground.apply({**job("no-template", "none", template="does-not-exist"),
                  "metadata": {"name": "no-template", "namespace": ns}})
    ground.apply({**job("no-secret", "none", storage={"secretRef": "nope"}),
                  "metadata": {"name": "no-secret", "namespace": ns}})
    wait_phase(ground, operator, ns, "no-template", "Failed")
    wait_phase(ground, operator, ns, "no-secret", "Failed")
    reasons = {n: next(c for c in get_job(ground, ns, n)["status"]["conditions"] if c["type"] == "Failed")
               for n in ("no-template", "no-secret")}
    assert reasons["no-template"]["reason"] == "TemplateNotFound"
    assert "does-not-exist" in reasons["no-template"]["message"]
    assert reasons["no-secret"]["reason"] == "SecretNotFound" and "nope" in reasons["no-secret"]["message"]


def test_deleting_a_running_job_cancels_and_removes_its_pod(ground, operator, ns):
    ground.add_gpu_nodes(1, gpus=1, gpu_type="cancel", prefix="cancel")
    ground.apply({**job("doomed", "cancel"), "metadata": {"name": "doomed", "namespace": ns}})
    running_pod(ground, ns, "doomed")
    ground.kubectl("delete", "ltj", "doomed", "-n", ns, "--timeout=60s")
    ground.wait_for(lambda: not trainer_pods(ground, ns), timeout=60, what="trainer pod gone")


def test_kopf_writes_nothing_on_a_job_its_first_change_is_queued(ground, operator, ns):
    # kopf puts a finalizer and a last-handled-configuration annotation on objects only for
    # change-detecting handlers (on.create/update/delete), which the operator has none of: each
    # would be a metadata patch and a watch event per job, and a write racing the job's claim.
    from kubernetes import client, watch

    custom = client.CustomObjectsApi(ground.api_client())
    listed = custom.list_namespaced_custom_object("lora-operator.io", "v1alpha1", ns, "loratrainingjobs")
    stream = watch.Watch().stream(custom.list_namespaced_custom_object, "lora-operator.io", "v1alpha1", ns,
                                  "loratrainingjobs", resource_version=listed["metadata"]["resourceVersion"],
                                  timeout_seconds=60)
    ground.apply({**job("bookkept", "no-such-gpu"), "metadata": {"name": "bookkept", "namespace": ns}})
    seen, meta = [], {}
    for event in stream:
        seen.append((event["type"], (event["object"].get("status") or {}).get("phase")))
        if seen[-1][1] == "Queued":
            meta = event["object"]["metadata"]
            break
    assert seen == [("ADDED", None), ("MODIFIED", "Queued")], seen
    assert not meta.get("finalizers"), meta
    assert not [key for key in meta.get("annotations") or {} if "kopf" in key or key.startswith("lora-operator.io/")]


def test_a_job_queued_behind_a_running_one_gets_an_estimated_start_near_its_eta(ground, operator, ns):
    """The operator plays the queue forward on the running job's ETA (from its progress.json)
    and writes the waiting job's status.queue.estimatedStartTime."""
    ground.add_gpu_nodes(1, gpus=4, gpu_type="eta", prefix="eta")
    ground.apply({**job("first", "eta", 5), "metadata": {"name": "first", "namespace": ns}})
    running_pod(ground, ns, "first")
    wait_phase(ground, operator, ns, "first", "Running")
    ground.apply({**job("second", "eta"), "metadata": {"name": "second", "namespace": ns}})
    wait_phase(ground, operator, ns, "second", "Queued")
    first = get_job(ground, ns, "first")
    uid = first["metadata"]["uid"]
    eta = 3600.0
    reported = datetime.now(UTC)
    progress = ProgressReport(job_uid=uid, step=100, total_steps=1000, steps_per_second=0.25, eta_seconds=eta,
                              updated_at=rfc3339(reported))
    bucket = "loras"
    data = progress.model_dump_json(by_alias=True).encode()
    client = ground.minio.client()
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    client.put_object(bucket, f"{ns}/first/{uid}/{PROGRESS_KEY}", io.BytesIO(data), len(data))

    def estimate() -> str | None:
        return (get_job(ground, ns, "second").get("status", {}).get("queue") or {}).get("estimatedStartTime")

    ground.wait_for(lambda: estimate() is not None, timeout=2 * ESTIMATE_SECONDS + 30,
                    what="second's estimated start")
    starts = parse_time(estimate())
    expected = reported + timedelta(seconds=eta)
    assert abs((starts - expected).total_seconds()) <= 120, (starts, expected)
    assert get_job(ground, ns, "first")["status"]["progress"]["etaSeconds"] == eta
    assert "queue" not in get_job(ground, ns, "first")["status"]  # a running job has no estimate

"""Specs the API server accepts but something later refuses or cannot handle, on the real control
plane with the operator as a process (kwok plays the kubelet; the tests end the pods).

Each job ends with a phase, a reason and an Event, whatever its spec holds: a trainer pod the API
server refuses fails its job at once and frees the node; a job no node matches says so and holds
up no other; a hand-patched phase does not fool the operator; values that once raised on every
reconcile (a deadline of 2^63-1 s, a malformed endpoint) end in a status.
"""

from __future__ import annotations

import json

import pytest
import test_operator
from test_operator import end_pod, get_job, job, phase, running_pod, trainer_pods, wait_phase

from testground.operator import run_kubectl_json

pytestmark = pytest.mark.cluster

FORBIDDEN_KEY = "example.com/forbidden"
operator, ns = test_operator.operator, test_operator.ns  # the same fixtures: one operator for the module


def applied(ground, ns: str, name: str, gpu_type: str, **spec) -> None:
    ground.apply({**job(name, gpu_type, **spec), "metadata": {"name": name, "namespace": ns}})


def condition(ground, ns: str, name: str, type_: str) -> dict | None:
    status = get_job(ground, ns, name).get("status") or {}
    return next((c for c in status.get("conditions") or () if c["type"] == type_), None)


def events(ground, ns: str, name: str) -> list[dict]:
    listing = run_kubectl_json(ground, "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")
    return listing["items"]


def refuse_pods_tolerating(ground, ns: str, key: str) -> None:
    """A ValidatingAdmissionPolicy (the apiserver's own admission, answering 422 Invalid) that
    refuses pods in `ns` that tolerate `key`: a platform's pod policy the CRD knows nothing of."""
    name = f"refuse-{ns}"
    ground.apply([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                          "operations": ["CREATE"], "resources": ["pods"]}]},
                  "validations": [{"expression": f"!has(object.spec.tolerations) || !object.spec.tolerations"
                                                 f".exists(t, has(t.key) && t.key == '{key}')",
                                   "message": f"spec.tolerations: {key} is not allowed in this namespace"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}},
    ])
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": ns},
             "spec": {"containers": [{"name": "c", "image": "x"}],
                      "tolerations": [{"key": key, "operator": "Exists"}]}}

    def refusing() -> bool:
        result = ground.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
        return result.returncode != 0 and "not allowed" in result.stderr
    ground.wait_for(refusing, timeout=30, what="the pod policy in force")


def test_a_pod_the_apiserver_refuses_fails_its_job_at_once_and_frees_the_node(ground, operator, ns):
    # Before: the 422 was logged, the node held by the claim until it expired, then the job was
    # queued again as "the pod was deleted; retrying (not counted)", forever.
    ground.add_gpu_nodes(1, gpus=1, gpu_type="refuse", prefix="refuse")
    refuse_pods_tolerating(ground, ns, FORBIDDEN_KEY)
    # "refused" must take the node before "next": it ranks first by its priority (by creation
    # time alone the two tie when made in one second, and "next" then wins on its name), and
    # "next" is made once "refused" waits in the queue (else "next" could be queued and take the
    # free node while "refused" was still being resolved). Either way "next" held the node and
    # "refused" waited for it until the test timed out.
    applied(ground, ns, "refused", "refuse", priority=1, placement={"gpuType": "refuse", "tolerations": [
        {"key": FORBIDDEN_KEY, "operator": "Exists"}]})
    ground.wait_for(lambda: phase(ground, ns, "refused") not in (None, "Pending"), timeout=30,
                    what="refused resolved")
    applied(ground, ns, "next", "refuse")
    wait_phase(ground, operator, ns, "refused", "Failed", timeout=60)  # the new node joins first
    failed = condition(ground, ns, "refused", "Failed")
    assert failed["reason"] == "PodRefused", failed
    assert f"spec.tolerations: {FORBIDDEN_KEY} is not allowed" in failed["message"], failed
    status = get_job(ground, ns, "refused")["status"]
    assert len(status["attempts"]) == 1 and not status["attempts"][0].get("counted"), status["attempts"]
    assert any(e["reason"] == "PodRefused" for e in events(ground, ns, "refused"))
    # the node is free again at once: the next job runs on it (the claim's hold lasted 60 s before)
    pod = running_pod(ground, ns, "next")
    assert pod["spec"]["affinity"]["nodeAffinity"], pod["spec"]
    assert not [p for p in trainer_pods(ground, ns) if p["metadata"]["labels"]["lora-operator.io/job"] == "refused"]
    end_pod(ground, ns, pod["metadata"]["name"], 0)
    wait_phase(ground, operator, ns, "next", "Succeeded")


def test_a_job_no_node_matches_says_so_and_holds_up_no_other(ground, operator, ns):
    ground.add_gpu_nodes(1, gpus=1, gpu_type="lonely-other", prefix="lonely-other")
    applied(ground, ns, "lonely", "h999")
    applied(ground, ns, "other", "lonely-other")
    ground.wait_for(lambda: (condition(ground, ns, "lonely", "Admitted") or {}).get("reason") == "NoMatchingNode",
                    timeout=30, what="lonely says no node matches")
    admitted = condition(ground, ns, "lonely", "Admitted")
    assert "spec.placement.gpuType 'h999'" in admitted["message"], admitted
    assert get_job(ground, ns, "lonely")["status"]["phase"] == "Queued"
    assert any(e["reason"] == "NoMatchingNode" and "h999" in e["message"] for e in events(ground, ns, "lonely"))
    end_pod(ground, ns, running_pod(ground, ns, "other")["metadata"]["name"], 0)  # not held up
    wait_phase(ground, operator, ns, "other", "Succeeded")
    ground.add_gpu_nodes(1, gpus=1, gpu_type="h999", prefix="h999")  # a node that matches joins
    end_pod(ground, ns, running_pod(ground, ns, "lonely")["metadata"]["name"], 0)
    wait_phase(ground, operator, ns, "lonely", "Succeeded")


def test_a_node_tainted_and_untainted_while_the_operator_runs_is_seen_by_the_next_pass(ground, operator, ns):
    """The operator keeps its node list between node events (`JobIndex.gpu_nodes`): a taint put on and
    taken off the only node a job fits must each reach the passes that follow."""
    (node,) = ground.add_gpu_nodes(1, gpus=1, gpu_type="taints-only", prefix="taints-only")
    ground.kubectl("taint", "nodes", node, "example.com/maintenance=now:NoSchedule")
    applied(ground, ns, "tainted", "taints-only")
    ground.wait_for(lambda: (condition(ground, ns, "tainted", "Admitted") or {}).get("reason") == "NoMatchingNode",
                    timeout=30, what="the tainted node matches no job")
    ground.kubectl("taint", "nodes", node, "example.com/maintenance-")
    pod = running_pod(ground, ns, "tainted")  # waits for it
    assert pod["spec"]["nodeName"] == node
    end_pod(ground, ns, pod["metadata"]["name"], 0)
    wait_phase(ground, operator, ns, "tainted", "Succeeded")


def test_a_hand_patched_succeeded_phase_is_put_back_and_the_pod_kept(ground, operator, ns):
    ground.add_gpu_nodes(1, gpus=1, gpu_type="handpatch", prefix="handpatch")
    applied(ground, ns, "patched", "handpatch")
    pod = running_pod(ground, ns, "patched")["metadata"]["name"]
    wait_phase(ground, operator, ns, "patched", "Running")
    ground.kubectl("patch", "ltj", "patched", "-n", ns, "--subresource=status", "--type=merge",
                   "-p", '{"status":{"phase":"Succeeded"}}')
    ground.wait_for(lambda: any(e["reason"] == "PhaseCorrected" for e in events(ground, ns, "patched")),
                    timeout=20, what="the phase corrected")
    assert get_job(ground, ns, "patched")["status"]["phase"] == "Running"
    assert condition(ground, ns, "patched", "Succeeded") is None
    assert pod in {p["metadata"]["name"] for p in trainer_pods(ground, ns)}  # a finished job's pod would go
    end_pod(ground, ns, pod, 0)
    wait_phase(ground, operator, ns, "patched", "Succeeded")


def test_a_deadline_of_2_63_seconds_runs_to_the_end(ground, operator, ns):
    # Before: timedelta(seconds=2**63-1) overflowed on every reconcile once the job was admitted.
    ground.add_gpu_nodes(1, gpus=1, gpu_type="deadline", prefix="deadline")
    applied(ground, ns, "forever", "deadline", activeDeadlineSeconds=2**63 - 1)
    end_pod(ground, ns, running_pod(ground, ns, "forever")["metadata"]["name"], 0)
    wait_phase(ground, operator, ns, "forever", "Succeeded")


def test_an_endpoint_that_breaks_the_storage_client_fails_with_the_error_named(ground, operator, ns):
    # Before: the client's ValueError escaped every reconcile: a blank phase, no Event. Since the
    # platform's endpoint allow-list, the endpoint is parsed (and refused) before any client exists.
    applied(ground, ns, "badport", "none", storage={"endpoint": "minio.example:99999"})
    wait_phase(ground, operator, ns, "badport", "Failed", timeout=20)
    failed = condition(ground, ns, "badport", "Failed")
    assert failed["reason"] == "EndpointNotAllowed" and "Port out of range" in failed["message"], failed
    assert "spec.storage.endpoint" in failed["message"], failed
    assert any(e["reason"] == "EndpointNotAllowed" for e in events(ground, ns, "badport"))

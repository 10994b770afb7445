"""Jobs whose checks fail, at scale, with the operator authorised like the chart's ServiceAccount
(a TokenRequest kubeconfig): every job gets a phase and a reason on its first reconcile, a failed
job is finished (never retried), and a job that met one brief permission error is retried on its
own backoff, not behind a fixed window of the oldest unresolved jobs.

Before: 100 SecretNotFound failures (no resolvedSpec) filled the follow loop's window of the 20
oldest unresolved jobs, and jobs that met a 403 had no phase at all; a healthy job that met one
403 stayed blank.
"""

from __future__ import annotations

import uuid

import pytest
from test_operator import get_job, job, running_pod

from testground.operator import OperatorProcess, install_crds, storage_secret
from testground.serviceaccount import service_account_kubeconfig

pytestmark = pytest.mark.cluster

BROKEN, LOCKED = 100, 20
OPERATOR_NS, OPERATOR_SA = "robust-system", "robust-operator"
CLUSTER_RULES = [  # the chart's ClusterRole (helm/lora-operator/templates/rbac.yaml) without Secrets
    {"apiGroups": ["lora-operator.io"], "resources": ["loratrainingjobs"],
     "verbs": ["get", "list", "watch", "patch", "delete"]},
    {"apiGroups": ["lora-operator.io"], "resources": ["loratrainingjobs/status"], "verbs": ["get", "patch"]},
    {"apiGroups": ["lora-operator.io"], "resources": ["loratrainingtemplates", "clusterloratrainingtemplates"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
]


def rbac(name: str) -> list[dict]:
    subject = [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": CLUSTER_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": subject},
    ]


def secret_reader(ns: str) -> list[dict]:
    """get on Secrets in `ns` only, as a per-namespace Role would grant it."""
    subject = [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "read-secrets",
                                                                                     "namespace": ns},
         "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "read-secrets", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
         "subjects": subject},
    ]


def jobs_in(ground, ns: str) -> list[dict]:
    return ground_json(ground, "get", "ltj", "-n", ns)["items"]


def ground_json(ground, *args: str) -> dict:
    import json
    return json.loads(ground.kubectl(*args, "-o", "json").stdout)


def reason_of(body: dict, type_: str) -> str | None:
    return next((c["reason"] for c in (body.get("status") or {}).get("conditions") or () if c["type"] == type_),
                None)


def test_a_brief_403_among_a_hundred_failed_and_twenty_forbidden_jobs_is_retried_fairly(ground, tmp_path):
    install_crds(ground)
    suffix = uuid.uuid4().hex[:6]
    broken, locked, healthy = (f"{kind}-{suffix}" for kind in ("broken", "locked", "healthy"))
    ground.kubectl("create", "namespace", OPERATOR_NS, check=False)
    for ns in (broken, locked, healthy):
        ground.kubectl("create", "namespace", ns)
        ground.apply(storage_secret(ground, ns))
    ground.apply(rbac(f"robust-{suffix}") + secret_reader(broken))
    ground.add_gpu_nodes(1, gpus=1, gpu_type="fair", prefix="fair")
    kubeconfig = service_account_kubeconfig(ground, OPERATOR_NS, OPERATOR_SA, tmp_path / "operator.kubeconfig")
    operator = OperatorProcess(ground, tmp_path / "operator.log", extra_env={"KUBECONFIG": str(kubeconfig)}).start()
    try:
        ground.apply([{**job(f"b{i}", "fair", storage={"secretRef": "no-such-secret"}),
                       "metadata": {"name": f"b{i}", "namespace": broken}} for i in range(BROKEN)]
                     + [{**job(f"l{i}", "fair"), "metadata": {"name": f"l{i}", "namespace": locked}}
                        for i in range(LOCKED)])

        # every job has a phase and a reason after its first reconcile
        def all_told() -> bool:
            return (all(reason_of(j, "Failed") == "SecretNotFound" for j in jobs_in(ground, broken))
                    and all(reason_of(j, "Resolved") == "CheckDeferred" for j in jobs_in(ground, locked)))
        ground.wait_for(all_told, timeout=120, interval=1, what="every broken and locked job told why")
        for body in jobs_in(ground, locked):
            assert body["status"]["phase"] == "Pending" and "403" in body["status"]["message"], body["status"]
        failed_versions = {j["metadata"]["name"]: j["metadata"]["resourceVersion"] for j in jobs_in(ground, broken)}

        ground.apply({**job("h", "fair"), "metadata": {"name": "h", "namespace": healthy}})
        ground.wait_for(lambda: reason_of(get_job(ground, healthy, "h"), "Resolved") == "CheckDeferred",
                        timeout=60, what="the healthy job told of its 403")
        ground.apply(secret_reader(healthy))  # the permission arrives
        running_pod(ground, healthy, "h")  # resolved, queued and admitted on its own retry
        assert reason_of(get_job(ground, healthy, "h"), "Resolved") == "Queued"
        # the failed jobs were finished: not one was reconciled (written) again meanwhile
        assert {j["metadata"]["name"]: j["metadata"]["resourceVersion"]
                for j in jobs_in(ground, broken)} == failed_versions
        # the forbidden ones are still told why, not failed
        assert all(reason_of(j, "Resolved") == "CheckDeferred" and j["status"]["phase"] == "Pending"
                   for j in jobs_in(ground, locked))
        assert operator.proc.alive(), operator.tail()
        assert "Traceback" not in operator.log.read_text(errors="replace"), operator.tail(100)
    finally:
        operator.stop()
        ground.kubectl("delete", "namespace", broken, locked, healthy, "--wait=false", check=False)

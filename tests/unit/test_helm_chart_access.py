"""The Helm chart's access control, rendered by the real `helm` binary of the test ground
(`testground.chart`): the operator's RBAC (least privilege, namespaced for a watchNamespace install,
off on request), the trainer's and the in-cluster dashboard's identities, and the priority ceiling's
admission policy.
"""

from __future__ import annotations

import json
from pathlib import Path

from testground import chart
from testground.chart import CHART, granted_by, of_kind, one, render, run_helm

helm = chart.helm  # the test ground's helm binary, as this module's fixture


EXPECTED_RULES = {
    ("lora-operator.io", "loratrainingjobs"): {"get", "list", "watch", "patch", "delete"},
    ("lora-operator.io", "loratrainingjobs/status"): {"get", "patch"},
    ("lora-operator.io", "loratrainingtemplates"): {"get", "list", "watch"},
    ("lora-operator.io", "clusterloratrainingtemplates"): {"get", "list", "watch"},
    ("", "pods"): {"get", "list", "watch", "create", "delete"},
    ("", "serviceaccounts"): {"create"},
    ("", "nodes"): {"list", "watch"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create"},
    ("events.k8s.io", "events"): {"create"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
"""What the operator's ClusterRole grants, (apiGroup, resource) -> verbs."""


def test_trainer_service_account_mounts_no_token_and_is_bound_to_nothing(helm: Path) -> None:
    docs = render(helm, "trainer.serviceAccount.namespaces={team-a,team-b}")
    trainers = [sa for sa in of_kind(docs, "ServiceAccount") if sa["metadata"]["name"] == "lora-trainer"]
    assert {sa["metadata"]["namespace"] for sa in trainers} == {"lora-system", "team-a", "team-b"}
    assert all(sa["automountServiceAccountToken"] is False for sa in trainers)
    for binding in of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding"):
        assert all(s["name"] != "lora-trainer" for s in binding["subjects"])
    operator_sa = one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert operator_sa != "lora-trainer"
    assert one(docs, "ClusterRoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": operator_sa, "namespace": "lora-system"}
    ]


def test_rbac_is_least_privilege_without_wildcards(helm: Path) -> None:
    docs = render(helm)
    assert not of_kind(docs, "Role")
    rules = one(docs, "ClusterRole")["rules"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "nonResourceURLs" not in rule
        assert "resourceNames" not in rule or rule["resources"] == ["secrets"]
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == EXPECTED_RULES
    # Secrets: get only, so the operator can check a job's secretRef exists but never enumerate them,
    # and only of the storage Secret names the platform allows.
    assert granted[("", "secrets")] == {"get"}
    secrets = next(rule for rule in rules if rule["resources"] == ["secrets"])
    assert secrets["resourceNames"] == ["lora-storage"]
    wider = render(helm, "storage.allowedSecretNames={team-s3,lora-storage}")
    secrets = next(rule for rule in one(wider, "ClusterRole")["rules"] if rule["resources"] == ["secrets"])
    assert secrets["resourceNames"] == ["lora-storage", "team-s3"]


NAMESPACED = {("", "pods"), ("", "serviceaccounts"), ("", "secrets")}
"""What a watchNamespace install grants in that namespace only (a Role), never cluster-wide."""


def test_rbac_of_a_watch_namespace_install_grants_pods_and_secrets_in_that_namespace_only(helm: Path) -> None:
    docs = render(helm, "operator.watchNamespace=team-a", "storage.allowedSecretNames={team-s3}")
    cluster = granted_by(one(docs, "ClusterRole")["rules"])
    assert not NAMESPACED & cluster.keys(), cluster
    # what stays cluster-wide: the jobs, templates, GPU nodes, Events, the peering and kopf's CRD watch
    # ... and kopf's view of namespaces (names only), to start its watch when the namespace appears
    assert cluster == {k: v for k, v in EXPECTED_RULES.items() if k not in NAMESPACED} | {
        ("", "namespaces"): {"list", "watch"}}
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == "team-a"
    assert granted_by(role["rules"]) == {k: v for k, v in EXPECTED_RULES.items() if k in NAMESPACED}
    secrets = next(rule for rule in role["rules"] if rule["resources"] == ["secrets"])
    assert secrets["resourceNames"] == ["lora-storage", "team-s3"] and secrets["verbs"] == ["get"]
    binding = one(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == "team-a"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == one(docs, "ClusterRoleBinding")["subjects"]
    assert not of_kind(render(helm, "operator.watchNamespace=team-a", "rbac.create=false"), "Role")


def test_rbac_can_be_turned_off(helm: Path) -> None:
    docs = render(helm, "rbac.create=false")
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")


def test_the_priority_ceiling_is_a_validating_admission_policy_of_the_values(helm: Path) -> None:
    docs = render(helm, "priority.maxByNamespace.team-a=500")
    policy = one(docs, "ValidatingAdmissionPolicy")
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["loratrainingjobs"]
    ceilings = next(v for v in policy["spec"]["variables"] if v["name"] == "ceilings")["expression"]
    assert json.loads(ceilings) == {"team-a": 500, "*": 0}  # the chart's default "*": 0 stays
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert not of_kind(render(helm, "priority.maxByNamespace=null"), "ValidatingAdmissionPolicy")
    older = run_helm(helm, "template", "lora", str(CHART), "--kube-version", "1.29.0").stdout
    assert "ValidatingAdmissionPolicy" not in older  # GA from 1.30; the chart still installs on 1.29


def test_the_in_cluster_dashboard_is_off_by_default_and_has_no_identity_of_its_own(helm: Path) -> None:
    assert not [d for d in render(helm) if d["metadata"]["name"].endswith("-ui")]
    docs = render(helm, "ui.inCluster.enabled=true", "ui.inCluster.namespace=team-a")
    ui = next(d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-ui"))
    pod = ui["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    command = pod["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "lora_operator.kubectl_lora.ui.incluster"]
    assert command[command.index("--namespace") + 1] == "team-a"
    service = next(d for d in of_kind(docs, "Service") if d["metadata"]["name"].endswith("-ui"))
    assert service["spec"]["selector"] == ui["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "ui"
    metrics = next(d for d in of_kind(docs, "Service") if d["metadata"]["name"].endswith("-metrics"))
    assert metrics["spec"]["selector"]["app.kubernetes.io/component"] == "operator"  # never the UI's pods

"""The Helm chart, linted and rendered by the real `helm` binary of the test ground
(`testground.chart`): the operator's Deployment and the configuration its values carry to it, the
values schema, the CRDs and examples it ships, its optional objects. Who may do what (RBAC, service
accounts, the admission policy) is in test_helm_chart_access.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from testground import chart
from testground.chart import CHART, KUBE_VERSION, ROOT, of_kind, one, operator_container, render, run_helm

PEERING_CRDS = "kopf-peering.yaml"
UNSET_BY_CHART = {"LORA_API_CONNECTIONS", "LORA_LIST_CHUNK", "LORA_PEERING_LIFETIME", "LORA_MALLOC_ARENAS",
                  "LORA_TRACEMALLOC", "LORA_TRACEMALLOC_FRAMES", "LORA_TRACEMALLOC_SECONDS"}
"""Process tuning and diagnostics: the chart leaves them at their defaults (operator.extraEnv sets them)."""


helm = chart.helm  # the test ground's helm binary, as this module's fixture


def test_chart_lints_strictly(helm: Path) -> None:
    run_helm(helm, "lint", "--strict", str(CHART))


def test_chart_refuses_clusters_older_than_1_29(helm: Path) -> None:
    result = run_helm(helm, "template", "lora", str(CHART), "--kube-version", "1.28.0", check=False)
    assert result.returncode != 0 and "kubeVersion" in result.stderr


def test_operator_pod_is_non_root_read_only_and_drops_all_capabilities(helm: Path) -> None:
    deployment = one(render(helm), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])


def test_operator_runs_lora_operator_run_with_kopf_liveness_apart_from_metrics(helm: Path) -> None:
    docs = render(helm)
    container = operator_container(docs)
    assert "command" not in container  # the image's ENTRYPOINT is lora-operator
    assert container["args"][:2] == ["run", "--liveness=http://0.0.0.0:8081/healthz"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LORA_METRICS_PORT"] == "8080"
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]


def test_operator_env_covers_the_configuration_contract(helm: Path) -> None:
    from lora_operator.config import ENV_VARS

    container = operator_container(render(helm, "gpu.toleration.enabled=true"))
    env = {e["name"]: e for e in container["env"]}
    assert set(ENV_VARS.values()) - UNSET_BY_CHART <= set(env)
    assert {name for name in env if name.startswith("LORA_")} <= set(ENV_VARS.values())
    assert not [e for e in env.values() if "secretKeyRef" in str(e)]  # no storage key of its own
    assert env["LORA_STORAGE_SECRET"]["value"] == "lora-storage"
    assert env["LORA_STORAGE_SECURE"]["value"] == "false"
    assert env["LORA_TRAINER_SERVICE_ACCOUNT"]["value"] == "lora-trainer"
    assert json.loads(env["LORA_GPU_TOLERATIONS"]["value"]) == [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    ]


def test_values_reach_the_operator_env(helm: Path) -> None:
    container = operator_container(render(
        helm, "storage.endpoint=s3.example.com:443", "storage.secure=true", "trainer.image.tag=9.9",
        "gpu.resourceName=amd.com/gpu", "operator.watchNamespace=team-a", "scheduling.namespaceNodeLimits.team-a=4",
        "storage.allowedEndpoints={minio-b:9000,https://s3.eu.example.com}",
        "storage.allowedSecretNames={team-keys,other-keys}",
    ))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env["LORA_NAMESPACE_NODE_LIMITS"]) == {"team-a": 4}
    default = {e["name"]: e.get("value") for e in operator_container(render(helm))["env"]}
    assert default["LORA_NAMESPACE_NODE_LIMITS"] == "{}"
    assert env["LORA_STORAGE_ENDPOINT"] == "s3.example.com:443"
    assert env["LORA_STORAGE_ALLOWED_ENDPOINTS"] == "minio-b:9000,https://s3.eu.example.com"
    assert default["LORA_STORAGE_ALLOWED_ENDPOINTS"] == ""
    # the names the chart's RBAC lets the operator read: the operator refuses others without a read
    assert env["LORA_STORAGE_ALLOWED_SECRET_NAMES"] == "lora-storage,team-keys,other-keys"
    assert default["LORA_STORAGE_ALLOWED_SECRET_NAMES"] == "lora-storage"
    assert env["LORA_STORAGE_SECURE"] == "true"
    assert env["LORA_TRAINER_IMAGE"] == "ghcr.io/lora-operator/lora-trainer:9.9"
    assert env["LORA_GPU_RESOURCE"] == "amd.com/gpu"
    assert env["LORA_WATCH_NAMESPACE"] == "team-a"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": "two"}, "/replicas"),
        ({"replicas": 0}, "/replicas"),
        ({"image": {"tag": 1.2}}, "/image/tag"),
        ({"storage": {"endpoint": ""}}, "/storage/endpoint"),
        ({"storage": {"endpoint": "http://minio:9000"}}, "/storage/endpoint"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"replicaCount": 3}, "replicaCount"),
    ],
    ids=["replicas-string", "replicas-zero", "tag-number", "endpoint-empty", "endpoint-scheme", "port-range",
         "unknown-key"],
)
def test_bad_values_fail_schema_validation(helm: Path, tmp_path: Path, values: dict, complaint: str) -> None:
    values_file = tmp_path / "bad.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = run_helm(helm, "template", "lora", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(values_file),
                  check=False)
    assert result.returncode != 0
    assert complaint in result.stderr, result.stderr


def test_values_schema_is_draft_07() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["properties"]["replicas"] == {
        "type": "integer", "minimum": 1, "description": schema["properties"]["replicas"]["description"]
    }
    assert "endpoint" in schema["properties"]["storage"]["required"]


def test_service_monitor_follows_its_toggle(helm: Path) -> None:
    assert not of_kind(render(helm), "ServiceMonitor")
    docs = render(helm, "metrics.serviceMonitor.enabled=true")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service_labels = one(docs, "Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()


def test_grafana_dashboard_parses_and_charts_every_operator_metric(helm: Path) -> None:
    from lora_operator.metrics import METRIC_NAMES

    assert not of_kind(render(helm), "ConfigMap")
    configmap = one(render(helm, "grafana.dashboard.enabled=true"), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["lora-operator.json"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for e in exprs for m in re.findall(r"\blora_operator_[a-z_]+", e)}
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    assert used == set(METRIC_NAMES)
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("queue", "phase", "gpu nodes", "latency", "progress", "loss", "retries"):
        assert topic in titles


def test_peering_crds_ship_with_the_chart_and_the_peering_object_is_rendered(helm: Path) -> None:
    crds = list(yaml.safe_load_all((CHART / "crds" / PEERING_CRDS).read_text()))
    assert {c["metadata"]["name"] for c in crds} == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    peering = one(render(helm), "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1" and peering["metadata"]["name"] == "lora-operator"
    namespaced = render(helm, "operator.watchNamespace=team-a")
    assert not of_kind(namespaced, "ClusterKopfPeering")
    assert one(namespaced, "KopfPeering")["metadata"] == {
        **one(namespaced, "KopfPeering")["metadata"], "name": "lora-operator", "namespace": "team-a"
    }


def _yaml_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def test_chart_crds_equal_the_generated_crds_byte_for_byte() -> None:
    generated = _yaml_files(ROOT / "crds")
    shipped = _yaml_files(CHART / "crds")
    shipped.pop(PEERING_CRDS, None)
    assert generated, "crds/ is empty: run `make crds` (python -m lora_operator.crdgen)"
    assert shipped == generated, "helm/lora-operator/crds/ drifted from crds/: run `bash helm/sync-crds.sh`"


def test_example_templates_in_the_chart_equal_the_repo_examples() -> None:
    assert _yaml_files(CHART / "files" / "cluster-templates") == _yaml_files(ROOT / "examples" / "templates"), (
        "helm/lora-operator/files/cluster-templates/ drifted from examples/templates/: run `bash helm/sync-crds.sh`"
    )


def test_example_templates_render_only_when_enabled_and_are_valid(helm: Path) -> None:
    from lora_operator.api import ClusterLoraTrainingTemplate

    assert not of_kind(render(helm), "ClusterLoraTrainingTemplate")
    rendered = of_kind(render(helm, "templates.examples.enabled=true"), "ClusterLoraTrainingTemplate")
    expected = [
        doc for path in sorted((CHART / "files" / "cluster-templates").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == "ClusterLoraTrainingTemplate"
    ]
    assert sorted(t["metadata"]["name"] for t in rendered) == sorted(t["metadata"]["name"] for t in expected)
    for template in rendered:
        assert template["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        template["metadata"]["labels"] = {
            k: v for k, v in template["metadata"]["labels"].items() if not k.startswith(("app.", "helm."))
        }
        # Compared as models: helm re-emits `1e-4` as 0.0001, which PyYAML (YAML 1.1) reads as a string.
        model = ClusterLoraTrainingTemplate.model_validate(template)
        assert model in [ClusterLoraTrainingTemplate.model_validate(e) for e in expected]


def test_pod_disruption_budget_only_with_more_than_one_replica(helm: Path) -> None:
    assert one(render(helm), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert not of_kind(render(helm, "replicas=1"), "PodDisruptionBudget")


def test_every_rendered_object_carries_the_chart_labels(helm: Path) -> None:
    docs = render(helm, "metrics.serviceMonitor.enabled=true", "grafana.dashboard.enabled=true",
                  "templates.examples.enabled=true")
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == "lora", f"{doc['kind']}/{doc['metadata']['name']}"


def test_notes_render_the_next_steps_with_every_toggle(helm: Path, tmp_path: Path) -> None:
    # `helm template` skips NOTES.txt and `helm install --dry-run` needs a cluster: render a copy of
    # the chart where the notes are wrapped in a ConfigMap.
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    body = "\n".join(f"    {line}" if not line.startswith("{{-") else line for line in notes.splitlines())
    (chart / "templates" / "notes-probe.yaml").write_text(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n{body}\n"
    )
    args = ["template", "lora", str(chart), "-n", "lora-system", "--kube-version", KUBE_VERSION,
            "--show-only", "templates/notes-probe.yaml"]
    for toggle in ("templates.examples.enabled", "gpu.toleration.enabled", "metrics.serviceMonitor.enabled",
                   "grafana.dashboard.enabled"):
        args += ["--set", f"{toggle}=true"]
    text = yaml.safe_load(run_helm(helm, *args).stdout)["data"]["notes"]
    for expected in ("create secret generic lora-storage", "lora-operator.io/gpu-type=h100",
                     "kubectl get ltj -w", "dedicated=gpu:NoSchedule", "ServiceMonitor",
                     "ConfigMap lora-lora-operator-dashboard", "kopf liveness 8081"):
        assert expected in text


def test_platform_choices_reach_the_operator_env(helm: Path) -> None:
    docs = render(helm, "trainer.allowedImages={registry.example.com/lora/*,ghcr.io/x/t:2}",
                  "trainer.fileUriRoot=/models")
    env = {e["name"]: e.get("value") for e in operator_container(docs)["env"]}
    assert json.loads(env["LORA_TRAINER_ALLOWED_IMAGES"]) == ["registry.example.com/lora/*", "ghcr.io/x/t:2"]
    assert env["LORA_FILE_URI_ROOT"] == "/models"
    default = {e["name"]: e.get("value") for e in operator_container(render(helm))["env"]}
    assert default["LORA_TRAINER_ALLOWED_IMAGES"] == "[]" and default["LORA_FILE_URI_ROOT"] == ""



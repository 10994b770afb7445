"""The test ground itself: real scheduling onto kwok GPU nodes, anti-affinity, CRDs, MinIO."""

from __future__ import annotations

import io
import json
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster


def _pod(name: str, gpus: int, labels: dict | None = None, anti_affinity_to: str | None = None) -> dict:
    spec: dict = {
        "containers": [{"name": "c", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        "restartPolicy": "Never",
    }
    if anti_affinity_to:
        spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"role": anti_affinity_to}}, "topologyKey": "kubernetes.io/hostname"}]}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def _pod_json(ground, ns: str, name: str) -> dict:
    return json.loads(ground.kubectl("get", "pod", "-n", ns, name, "-o", "json").stdout)


@pytest.fixture
def namespace(ground, request):
    name = request.node.name.replace("_", "-")[:50].lower().strip("-")
    ground.kubectl("create", "namespace", name)
    yield name
    ground.kubectl("delete", "namespace", name, "--wait=false")


def test_gpu_pod_is_scheduled_onto_a_kwok_gpu_node_and_runs(ground, namespace):
    node = ground.add_gpu_nodes(1, gpus=4, gpu_type="a100", prefix="ground-run")[0]
    pod = _pod("gpu-pod", 4)
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    pod["metadata"]["namespace"] = namespace
    ground.apply(pod)
    ground.wait_for(lambda: _pod_json(ground, namespace, "gpu-pod")["status"].get("phase") == "Running",
                    timeout=60, what="pod Running")
    assert _pod_json(ground, namespace, "gpu-pod")["spec"]["nodeName"] == node
    labels = json.loads(ground.kubectl("get", "node", node, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["lora-operator.io/gpu-type"] == "a100"


def test_second_pod_with_required_anti_affinity_stays_pending_on_one_node(ground, namespace):
    node = ground.add_gpu_nodes(1, gpus=8, prefix="ground-anti")[0]
    for name, anti in (("first", None), ("second", "trainer")):
        pod = _pod(name, 1, labels={"role": "trainer"}, anti_affinity_to=anti)
        pod["metadata"]["namespace"] = namespace
        pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
        ground.apply(pod)
        if name == "first":
            ground.wait_for(lambda: _pod_json(ground, namespace, "first")["status"].get("phase") == "Running",
                            timeout=60, what="first pod Running")

    def unschedulable() -> bool:
        conditions = _pod_json(ground, namespace, "second")["status"].get("conditions", [])
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)

    ground.wait_for(unschedulable, timeout=60, what="second pod marked Unschedulable")
    second = _pod_json(ground, namespace, "second")
    assert second["status"]["phase"] == "Pending"
    assert "nodeName" not in second["spec"]


CRD = textwrap.dedent("""
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: widgets.ground.lora-operator.io}
    spec:
      group: ground.lora-operator.io
      names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wdg]}
      scope: Namespaced
      versions:
      - name: v1
        served: true
        storage: true
        subresources: {status: {}}
        additionalPrinterColumns:
        - {name: Colour, type: string, jsonPath: .spec.colour}
        - {name: Size, type: integer, jsonPath: .spec.size}
        schema:
          openAPIV3Schema:
            type: object
            properties:
              spec:
                type: object
                properties:
                  colour: {type: string}
                  size: {type: integer}
""")


def test_crd_applied_with_kubectl_is_served_with_printer_columns(ground, namespace, tmp_path):
    path = tmp_path / "crd.yaml"
    path.write_text(CRD)
    ground.kubectl("apply", "-f", str(path))
    ground.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/widgets.ground.lora-operator.io")
    ground.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
        "apiVersion": "ground.lora-operator.io/v1", "kind": "Widget", "metadata": {"name": "w1"},
        "spec": {"colour": "teal", "size": 7}}))
    table = ground.kubectl("get", "wdg", "-n", namespace).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "COLOUR", "SIZE"]
    assert table[1].split()[:3] == ["w1", "teal", "7"]


def test_minio_put_get_list_through_the_sdk(ground):
    client = ground.minio.client()
    client.make_bucket("ground-test")
    for i in range(3):
        data = f"object {i}".encode()
        client.put_object("ground-test", f"prefix/o{i}.txt", io.BytesIO(data), len(data))
    names = sorted(o.object_name for o in client.list_objects("ground-test", prefix="prefix/", recursive=True))
    assert names == ["prefix/o0.txt", "prefix/o1.txt", "prefix/o2.txt"]
    assert client.get_object("ground-test", "prefix/o1.txt").read() == b"object 1"


def test_apiserver_reports_the_pinned_kubernetes_version(ground):
    version = json.loads(ground.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.34.4"


def test_kwok_runs_with_the_grounds_worker_counts(ground):
    """kwok is started with `KWOK_OPTIONS` (more workers per fake kubelet stage than its 4) and runs
    (it exits on a config it cannot read); what they change is measured by bench/operator_scale.py."""
    from testground.controlplane import KWOK_OPTIONS

    kwok = ground.control_plane.procs["kwok"]
    assert kwok.alive()
    config = next(arg.split("=", 1)[1] for arg in kwok.argv if arg.startswith("--config="))
    docs = list(yaml.safe_load_all(Path(config).read_text()))
    assert docs[0]["options"] == KWOK_OPTIONS
    assert [d["metadata"]["name"] for d in docs[1:]] == ["node-initialize", "node-heartbeat-with-lease"]


def test_fake_kubelets_renew_leases_but_report_node_status_at_a_kubelets_pace(ground):
    """With `NODE_STAGES` a fake node's status keeps the heartbeat it was made Ready with (kwok's
    with-lease stage reports every 10-20 minutes) while its Lease is renewed every few seconds; kwok's
    own choice under leases re-reported status every 20-45 s, 45 PATCHes a second at 1000 nodes."""
    ground.add_gpu_nodes(1, gpus=1, gpu_type="a100", prefix="heartbeat")
    nodes = json.loads(ground.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    oldest = min((n for n in nodes if "kwok.x-k8s.io/node" in n["metadata"].get("annotations", {})),
                 key=lambda n: n["metadata"]["creationTimestamp"])
    name, created = oldest["metadata"]["name"], _time(oldest["metadata"]["creationTimestamp"])
    time.sleep(max(0.0, 50 - (datetime.now(UTC) - created).total_seconds()))  # past 20 s + 25 s jitter

    node = json.loads(ground.kubectl("get", "node", name, "-o", "json").stdout)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    lease = json.loads(ground.kubectl("get", "lease", "-n", "kube-node-lease", name, "-o", "json").stdout)
    now = datetime.now(UTC)
    assert ready["status"] == "True"
    assert (_time(ready["lastHeartbeatTime"]) - created).total_seconds() < 15, ready
    assert (now - _time(lease["spec"]["renewTime"])).total_seconds() < 30, lease["spec"]


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_ground_starts_and_tears_down_leaving_no_process(tmp_path):
    import os

    from testground import Ground

    own = Ground.up(tmp_path / "own", gpu_nodes=1, gpus=2)
    pids = [p.pid for p in own.control_plane.procs.values()] + [own.minio.proc.pid]
    assert own.startup_seconds > 0
    assert own.kubectl("get", "nodes", "-o", "name").stdout.strip() == "node/gpu-0"
    own.down()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    assert all(gone(pid) for pid in pids)


def test_env_and_seed_point_a_shell_and_a_kwok_job_at_a_recorded_ground(ground, capsys):
    from testground.__main__ import main

    assert main(["env", "--workdir", str(ground.workdir)]) == 0
    exported = dict(line.removeprefix("export ").split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert exported["KUBECONFIG"] == str(ground.kubeconfig)
    assert exported["S3_ENDPOINT"] == exported["LORA_STORAGE_ENDPOINT"] == ground.minio.endpoint
    assert exported["AWS_ACCESS_KEY_ID"] == ground.minio.access_key and "LORA_STORAGE_ACCESS_KEY" not in exported
    assert exported["LORA_STORAGE_SECURE"] == exported["S3_SECURE"] == "false"
    assert main(["seed", "--workdir", str(ground.workdir)]) == 0
    client = ground.minio.client()
    assert all(client.bucket_exists(b) for b in ("datasets", "models", "loras"))
    assert [o.object_name for o in client.list_objects("datasets", prefix="kwok/")] == ["kwok/placeholder.txt"]

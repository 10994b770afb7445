"""MultiKueue: a LoraTrainingJob on the manager cluster is dispatched by Kueue to a worker cluster,
trained there for real (the tiny SD1.5 trainer, run by the kubelet shim on the worker's pod) and
finishes on the manager with its checkpoints.

Two real control planes (the session's ground is the manager; the worker has its own etcd,
kube-apiserver, controllers, kwok GPU node and Kueue), both Kueues built from the pinned module,
and the ground's MinIO shared by both clusters: storage is the only channel from trainer to
operator, so nothing but the Job crosses between the clusters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lora_operator.api import API_VERSION, ExitCode, LoraTrainingJob
from lora_operator.multikueue import MANAGED_BY
from lora_operator.render import pod_name
from testground.kubelet_shim import KubeletShim
from testground.multikueue import Worker
from testground.operator import KWOK_DATASET, OperatorProcess, install_crds, run_kubectl_json
from testground.seed import make_dataset, upload
from testground.tenant import tenant
from tinymodels import build_tiny_model

pytestmark = [pytest.mark.cluster, pytest.mark.multikueue]

REPO = Path(__file__).resolve().parents[2]
NS = "mkq"
QUEUE = "gpu-queue"  # the LocalQueue of examples/kueue/multikueue.yaml (manager) and queues.yaml (worker)
WORKER = "worker1"  # the MultiKueueCluster of examples/kueue/multikueue.yaml
TRAINER_SA = "lora-trainer"  # OperatorConfig.trainer_service_account's default


@pytest.fixture(scope="module")
def worker(ground, tmp_path_factory):
    """The worker cluster connected to the manager's Kueue by the examples, with the namespace,
    trainer ServiceAccount and storage Secret mirrored on it, as MultiKueue expects of a platform."""
    install_crds(ground)
    w = Worker(ground, WORKER, tmp_path_factory.mktemp("worker1"))
    manager_objects: list[dict] = []
    try:
        w.up(gpu_nodes=1, gpus=8)
        for cluster in (ground, w.ground):
            tenant(cluster, NS, storage=ground)
        w.ground.kubectl("create", "serviceaccount", TRAINER_SA, "-n", NS)
        manager_objects = w.connect(NS)
        yield w
    finally:
        # Kueue's finalizers go while it runs: delete what the manager keeps before stopping it
        ground.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        if manager_objects:
            ground.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", check=False,
                           input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manager_objects}))
        w.down()


@pytest.fixture(scope="module")
def inputs(ground, tmp_path_factory):
    """The tiny SD1.5 model and the demo dataset in the shared MinIO."""
    folder = tmp_path_factory.mktemp("inputs")
    upload(ground, "s3://models/tiny-sd15/", build_tiny_model("sd15", folder / "tiny-sd15"))
    make_dataset(folder / "dataset")
    upload(ground, "s3://datasets/demo/", folder / "dataset")


def demo_job(name: str, **spec) -> dict:
    """examples/demo-job.yaml in the MultiKueue queue, `spec` replacing top-level fields."""
    job = yaml.safe_load((REPO / "examples/demo-job.yaml").read_text())
    assert job["apiVersion"] == API_VERSION and job["kind"] == LoraTrainingJob.KIND
    job["metadata"] = {"name": name, "namespace": NS}
    job["spec"].update(queueName=QUEUE, **spec)
    return job


def run_on_worker(ground, worker, tmp_path, job: dict) -> tuple[dict, KubeletShim]:
    """Applies `job` on the manager with the operator running there and the kubelet shim on the
    worker; returns the job's final status and the shim."""
    name = job["metadata"]["name"]
    operator = OperatorProcess(ground, tmp_path / "operator.log", extra_env={"LORA_KUEUE_ENABLED": "1"}).start()
    shim = KubeletShim(worker.ground, tmp_path / "worker-pods", namespaces=frozenset({NS})).start()

    def status() -> dict:
        return run_kubectl_json(ground, "get", "ltj", name, "-n", NS).get("status") or {}

    try:
        ground.apply(job)
        ground.wait_for(lambda: status().get("phase") in ("Succeeded", "Failed"), timeout=420,
                        what="the MultiKueue job finished", interval=2)
        return status(), shim
    except TimeoutError:
        raise AssertionError(f"{json.dumps(status())[:3000]}\n--- operator ---\n{operator.tail(40)}\n"
                             f"--- worker pods ---\n{worker.ground.kubectl('get', 'pods', '-A').stdout}") from None
    finally:
        shim.stop()
        operator.stop()


def test_a_job_on_the_manager_trains_on_the_worker_and_finishes_with_checkpoints(ground, worker, inputs, tmp_path):
    done, shim = run_on_worker(ground, worker, tmp_path, demo_job("far"))
    assert done["phase"] == "Succeeded", done

    # the manager's Job was MultiKueue's (Kueue's webhook set managedBy from the ClusterQueue's
    # AdmissionCheck) and its Workload was admitted through the worker
    name = pod_name("far", 1)
    manager_job = run_kubectl_json(ground, "get", "job", name, "-n", NS)
    assert manager_job["spec"]["managedBy"] == MANAGED_BY
    assert manager_job["metadata"]["ownerReferences"][0]["name"] == "far"
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in manager_job["status"]["conditions"])
    workloads = [w for w in run_kubectl_json(ground, "get", "workloads.kueue.x-k8s.io", "-n", NS)["items"]
                 if any(o["name"] == name for o in w["metadata"].get("ownerReferences", []))]
    assert [w["status"].get("clusterName") for w in workloads] == [WORKER]
    # no pod ever ran here; the worker ran the one trainer pod, of the Job copied there
    assert run_kubectl_json(ground, "get", "pods", "-n", NS)["items"] == []
    assert len(shim.exits) == 1 and list(shim.exits.values()) == [0], shim.exits
    assert next(iter(shim.exits)).startswith(f"{NS}/{name}-")

    attempt = done["attempts"][0]
    assert attempt["node"] == f"multikueue/{WORKER}" and attempt["reason"] == "TrainingComplete"
    assert done["attempt"] == 1 and len(done["attempts"]) == 1
    names = sorted({c["name"] for c in done["checkpoints"]})
    assert names == ["epoch-0001", "epoch-0002"]
    assert all(len(c["sha256"]) == 64 and c["sizeBytes"] > 0 for c in done["checkpoints"])
    assert done["progress"]["step"] == done["progress"]["totalSteps"] == 8
    uid = run_kubectl_json(ground, "get", "ltj", "far", "-n", NS)["metadata"]["uid"]
    kohya = f"{NS}/far/{uid}/checkpoints/epoch-0002/kohya.safetensors"
    assert ground.minio.client().stat_object("loras", kohya).size > 0


def test_the_trainers_input_error_on_the_worker_fails_the_job_on_the_manager_without_a_retry(
        ground, worker, inputs, tmp_path):
    """The dataset holds only a text file: the operator's check before queueing passes (it is not
    empty) and the trainer on the worker exits BAD_DATASET (65). Its exit code reaches the manager
    through the Job's podFailurePolicy message, so the job fails at once as an input error instead
    of being retried as a crash."""
    done, shim = run_on_worker(ground, worker, tmp_path, demo_job(
        "nodata", dataset={"uri": KWOK_DATASET}, retryPolicy={"maxRetries": 2, "backoffSeconds": 1}))
    assert list(shim.exits.values()) == [ExitCode.BAD_DATASET], shim.exits
    assert done["phase"] == "Failed", done
    assert len(done["attempts"]) == 1, done["attempts"]
    attempt = done["attempts"][0]
    assert attempt["node"] == f"multikueue/{WORKER}" and attempt["exitCode"] == ExitCode.BAD_DATASET, attempt
    failed = next(c for c in done["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InputError", failed

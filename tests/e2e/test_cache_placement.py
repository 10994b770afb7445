"""Issue 22's "done when": with the node-local model cache on, a second job with the same base model
lands on the node that holds it, and its trainer transfers 0 bytes of model.

Two kwok GPU nodes; the kubelet shim runs each trainer for real (tiny SD1.5 on CPU, MinIO storage),
with one cache folder per node behind the pods' hostPath. The first job runs on the second node
(the first is cordoned while it is admitted), so the usual choice for the next job, the first node
by name, is not where the model is.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from testground.kubelet_shim import KubeletShim
from testground.operator import OperatorProcess, install_crds
from testground.seed import make_dataset, upload
from testground.tenant import tenant
from tinymodels import build_tiny_model

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
HOST_PATH = "/var/lib/lora-cache"


def demo_job(name: str, gpu_type: str, model: str) -> dict:
    job = yaml.safe_load((REPO / "examples/demo-job.yaml").read_text())
    job["metadata"]["name"] = name
    job["spec"]["baseModel"]["uri"] = model
    job["spec"]["placement"] = {"gpuType": gpu_type}
    job["spec"]["previews"]["everyEpochs"] = 0
    job["spec"]["training"]["epochs"] = 1
    return job


def test_the_second_job_lands_on_the_node_with_its_model_and_downloads_nothing(ground, tmp_path):
    install_crds(ground)
    suffix = uuid.uuid4().hex[:6]
    model = f"s3://models/cache-{suffix}/"
    upload(ground, model, build_tiny_model("sd15", tmp_path / "tiny-sd15"))
    make_dataset(tmp_path / "dataset")
    upload(ground, "s3://datasets/demo/", tmp_path / "dataset")
    ns, gpu_type = f"cache-{suffix}", f"cache{suffix}"
    first, second = tenant(ground, ns, gpu_type, nodes=2, prefix=f"cache-{suffix}").nodes
    operator = OperatorProcess(ground, tmp_path / "operator.log",
                               extra_env={"LORA_MODEL_CACHE_HOST_PATH": HOST_PATH}).start()
    shim = KubeletShim(ground, tmp_path / "pods", namespaces=frozenset({ns})).start()

    def status(name: str) -> dict:
        return json.loads(ground.kubectl("get", "ltj", name, "-n", ns, "-o", "json").stdout).get("status", {})

    def finished(name: str) -> dict:
        ground.wait_for(lambda: status(name).get("phase") in ("Succeeded", "Failed"), timeout=300,
                        what=f"{name} finished")
        result = status(name)
        assert result["phase"] == "Succeeded", (result, operator.tail())
        return result

    try:
        ground.kubectl("cordon", first)
        ground.apply({**demo_job("cold", gpu_type, model), "metadata": {"name": "cold", "namespace": ns}})
        ground.wait_for(lambda: status("cold").get("phase") in ("Running", "Succeeded"), timeout=120,
                        what="cold admitted")
        ground.kubectl("uncordon", first)
        cold = finished("cold")
        assert cold["attempts"][-1]["node"] == second and cold["cachedOn"] == second
        [fetched] = cold["models"]
        assert fetched["uri"] == model and fetched["hit"] is False and fetched["bytes"] > 0

        ground.apply({**demo_job("warm", gpu_type, model), "metadata": {"name": "warm", "namespace": ns}})
        warm = finished("warm")
        assert warm["attempts"][-1]["node"] == second  # not the first node, free and first by name
        [fetched] = warm["models"]
        assert fetched["hit"] is True and fetched["bytes"] == 0 and fetched["key"] == cold["models"][0]["key"]
        # the node's cache holds one entry; the other node's holds nothing
        assert (tmp_path / "pods" / "nodes" / second / HOST_PATH.lstrip("/") / "models" / fetched["key"]).is_dir()
        assert not (tmp_path / "pods" / "nodes" / first).exists()
    finally:
        shim.stop()
        operator.stop()
        ground.kubectl("delete", "namespace", ns, "--wait=false", check=False)

"""End to end: the operator creates the trainer pod, the kubelet shim runs its real command and
environment (tiny SD1.5 on CPU, MinIO storage), and the job ends Succeeded with checkpoints and
previews in its status; selecting a checkpoint copies it to final/; its log stays readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_operator.kubectl_lora import main as kubectl_lora
from testground.kubelet_shim import KubeletShim
from testground.operator import OperatorProcess, install_crds
from testground.seed import make_dataset, upload
from testground.tenant import tenant
from tinymodels import build_tiny_model

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def test_demo_job_trains_for_real_and_reports_checkpoints_previews_and_final(ground, tmp_path, capsys):
    install_crds(ground)
    upload(ground, "s3://models/tiny-sd15/", build_tiny_model("sd15", tmp_path / "tiny-sd15"))
    make_dataset(tmp_path / "dataset")
    upload(ground, "s3://datasets/demo/", tmp_path / "dataset")
    tenant(ground, "e2e", "h100", prefix="e2e")
    operator = OperatorProcess(ground, tmp_path / "operator.log").start()
    shim = KubeletShim(ground, tmp_path / "pods", namespaces=frozenset({"e2e"})).start()
    try:
        ground.kubectl("apply", "-n", "e2e", "-f", str(REPO / "examples/demo-job.yaml"))

        def job() -> dict:
            return json.loads(ground.kubectl("get", "ltj", "demo", "-n", "e2e", "-o", "json").stdout)

        ground.wait_for(lambda: job().get("status", {}).get("phase") in ("Succeeded", "Failed"), timeout=300,
                        what="demo job finished")
        status = job()["status"]
        assert status["phase"] == "Succeeded", (status, operator.tail())
        assert list(shim.exits.values()) == [0]
        names = sorted({c["name"] for c in status["checkpoints"]})
        assert names == ["epoch-0001", "epoch-0002"]
        assert all(len(c["sha256"]) == 64 and c["sizeBytes"] > 0 for c in status["checkpoints"])
        assert any(c.get("validationLoss") is not None for c in status["checkpoints"])
        assert {p["epoch"] for p in status["previews"]} == {1, 2}
        assert status["progress"]["step"] == status["progress"]["totalSteps"] == 8
        client = ground.minio.client()
        prefix = f"e2e/demo/{job()['metadata']['uid']}/"
        kohya = prefix + "checkpoints/epoch-0002/kohya.safetensors"
        assert client.stat_object("loras", kohya).size == next(
            c["sizeBytes"] for c in status["checkpoints"] if c["name"] == "epoch-0002" and c["format"] == "kohya")

        ground.kubectl("patch", "ltj", "demo", "-n", "e2e", "--type=merge",
                       "-p", '{"spec":{"selectedCheckpoint":"epoch-0001"}}')
        ground.wait_for(lambda: (job()["status"].get("output") or {}).get("checkpoint") == "epoch-0001",
                        timeout=60, what="checkpoint finalized")
        final = sorted(o.object_name for o in client.list_objects("loras", prefix=prefix + "final/", recursive=True))
        assert prefix + "final/kohya.safetensors" in final

        # the pod is gone: kubectl lora logs shows the last lines the real trainer kept in storage
        ground.wait_for(lambda: not ground.kubectl("get", "pods", "-n", "e2e", "-o", "name").stdout.strip(),
                        timeout=60, what="the trainer pod deleted")
        m = ground.minio
        flags = ["--kubeconfig", str(ground.kubeconfig), "-n", "e2e", "--s3-endpoint", m.endpoint,
                 "--access-key", m.access_key, "--secret-key", m.secret_key, "--no-s3-secure"]
        assert kubectl_lora(["logs", "demo", *flags]) == 0
        out = capsys.readouterr()
        assert f"checkpoint file(s) under s3://loras/{prefix}" in out.out, out
        assert f"the last lines of attempt 1, kept at s3://loras/{prefix}logs/attempt-1.txt" in out.err
    finally:
        shim.stop()
        operator.stop()

"""kubectl lora cancel and logs against the operator on the real ground: a cancelled job ends
Cancelled with its finished epochs in status and storage (deleting it would drop both), and
its kept log is readable once the pod is gone.

kwok plays the trainer: the test writes what the trainer would (a finished epoch's checkpoint,
the manifest, the log tail) under the prefix the pod was given.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from test_operator import get_job, job, ns, operator, running_pod, trainer_pods, wait_phase  # noqa: F401

from lora_operator.kubectl_lora import main

pytestmark = pytest.mark.cluster


def test_cancel_keeps_finished_epochs_and_logs_fall_back_to_the_kept_tail(ground, operator, ns, capsys):  # noqa: F811
    ground.add_gpu_nodes(1, gpus=1, gpu_type="cancel", prefix="cancel")
    ground.apply({**job("stop", "cancel"), "metadata": {"name": "stop", "namespace": ns}})
    pod = running_pod(ground, ns, "stop")
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    prefix = env["LORA_OUTPUT_PREFIX"]
    assert get_job(ground, ns, "stop")["status"]["output"]["prefix"] == prefix  # published from the start
    bucket, _, base = prefix.removeprefix("s3://").partition("/")
    client = ground.minio.client()
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    weights = b"weights of epoch 1"
    client.put_object(bucket, base + "checkpoints/epoch-0001/kohya.safetensors", io.BytesIO(weights), len(weights))
    manifest = json.dumps({"checkpoints": [{
        "name": "epoch-0001", "epoch": 1, "step": 4, "format": "kohya",
        "path": "checkpoints/epoch-0001/kohya.safetensors", "sizeBytes": len(weights),
        "sha256": hashlib.sha256(weights).hexdigest(), "validationLoss": 0.2}], "jobUid": env["LORA_JOB_UID"]}).encode()
    client.put_object(bucket, base + "manifest.json", io.BytesIO(manifest), len(manifest))
    kept = b"INFO epoch 1 done\nINFO epoch 2 step 5/8\n"
    client.put_object(bucket, base + "logs/attempt-1.txt", io.BytesIO(kept), len(kept))
    flags = ["--kubeconfig", str(ground.kubeconfig), "--s3-endpoint", ground.minio.endpoint, "--access-key",
             ground.minio.access_key, "--secret-key", ground.minio.secret_key, "--no-s3-secure"]

    # kwok's node serves no pod logs: the API server says so, and the kept lines are shown instead
    assert main(["logs", "stop", "-n", ns, *flags]) == 0
    out = capsys.readouterr()
    assert out.out == kept.decode() and f"no log from pod {pod['metadata']['name']}" in out.err

    assert main(["cancel", "stop", "-n", ns, *flags]) == 0
    assert "ltj/stop cancelled" in capsys.readouterr().out
    assert get_job(ground, ns, "stop")["spec"]["cancel"] is True
    wait_phase(ground, operator, ns, "stop", "Cancelled")
    status = get_job(ground, ns, "stop")["status"]
    assert [c["name"] for c in status["checkpoints"]] == ["epoch-0001"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Cancelled" and "spec.cancel is true" in failed["message"]
    ground.wait_for(lambda: not trainer_pods(ground, ns), timeout=30, what="the trainer pod gone")
    assert client.get_object(bucket, base + "checkpoints/epoch-0001/kohya.safetensors").read() == weights

    assert main(["logs", "stop", "-n", ns, *flags]) == 0  # the pod is gone now
    out = capsys.readouterr()
    assert out.out == kept.decode() and f"pod {pod['metadata']['name']} is gone" in out.err
    assert main(["cancel", "stop", "-n", ns, *flags]) == 1
    assert "ltj/stop is Cancelled already" in capsys.readouterr().err

    ground.kubectl("patch", "ltj", "stop", "-n", ns, "--type=merge", "-p", '{"spec":{"selectedCheckpoint":"auto"}}')
    ground.wait_for(lambda: (get_job(ground, ns, "stop")["status"].get("output") or {}).get("checkpoint"),
                    timeout=30, what="a cancelled job's finished epoch selected")
    assert client.get_object(bucket, base + "final/kohya.safetensors").read() == weights

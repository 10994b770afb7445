"""selectedCheckpoint auto and deleteUnselected after the run, on the real ground: the operator
picks, copies to final/, deletes in MinIO and says what it did in status and Events.

kwok plays the trainer: the test writes the trainer's manifest and checkpoint files under the
job's output prefix (read from the pod, as the trainer reads it), then ends the pod with exit 0.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from test_operator import end_pod, get_job, job, ns, operator, running_pod, wait_phase  # noqa: F401

from lora_operator.kubectl_lora import main as kubectl_lora
from testground.operator import run_kubectl_json

pytestmark = pytest.mark.cluster
LOSSES = {1: 0.30, 2: 0.08, 3: 0.12}


def output_prefix(pod: dict) -> tuple[str, str]:
    """The output prefix and job UID the pod was given (the operator reads only what that job wrote)."""
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    return env["LORA_OUTPUT_PREFIX"], env["LORA_JOB_UID"]


def write_trainer_outputs(ground, prefix: str, job_uid: str, **manifest_fields) -> tuple[str, str]:
    """Three kohya checkpoints and the manifest listing them (with `manifest_fields`); returns (bucket, key
    prefix)."""
    bucket, _, base = prefix.removeprefix("s3://").partition("/")
    client = ground.minio.client()
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    entries = []
    for epoch, loss in LOSSES.items():
        data = f"weights of epoch {epoch}".encode()
        path = f"checkpoints/epoch-{epoch:04d}/kohya.safetensors"
        client.put_object(bucket, base + path, io.BytesIO(data), len(data))
        entries.append({"name": f"epoch-{epoch:04d}", "epoch": epoch, "step": 4 * epoch, "format": "kohya",
                        "path": path, "sizeBytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                        "validationLoss": loss})
    manifest = json.dumps({"checkpoints": entries, "finished": True, "jobUid": job_uid, **manifest_fields}).encode()
    client.put_object(bucket, base + "manifest.json", io.BytesIO(manifest), len(manifest))
    return bucket, base


def objects(ground, bucket: str, prefix: str) -> dict[str, bytes]:
    client = ground.minio.client()
    return {o.object_name[len(prefix):]: client.get_object(bucket, o.object_name).read()
            for o in client.list_objects(bucket, prefix=prefix, recursive=True)}


def event_messages(ground, namespace: str, name: str, reason: str) -> list[str]:
    events = run_kubectl_json(ground, "get", "events", "-n", namespace,
                              "--field-selector", f"involvedObject.name={name}")
    return [e["message"] for e in events["items"] if e["reason"] == reason]


def test_auto_picks_the_lowest_loss_and_delete_unselected_after_the_run_deletes_the_rest(ground, operator, ns, capsys):  # noqa: F811
    ground.add_gpu_nodes(1, gpus=1, gpu_type="select", prefix="select")
    ground.apply({**job("pick", "select"), "metadata": {"name": "pick", "namespace": ns}})
    pod = running_pod(ground, ns, "pick")
    bucket, base = write_trainer_outputs(ground, *output_prefix(pod))
    end_pod(ground, ns, pod["metadata"]["name"], 0)
    wait_phase(ground, operator, ns, "pick", "Succeeded")
    status = get_job(ground, ns, "pick")["status"]
    assert sorted({c["name"] for c in status["checkpoints"]}) == ["epoch-0001", "epoch-0002", "epoch-0003"]

    def patch(spec: dict) -> None:
        ground.kubectl("patch", "ltj", "pick", "-n", ns, "--type=merge", "-p", json.dumps({"spec": spec}))

    patch({"selectedCheckpoint": "auto"})
    ground.wait_for(lambda: (get_job(ground, ns, "pick")["status"].get("output") or {}).get("checkpoint"),
                    timeout=30, what=f"auto's pick\n{operator.tail()}")
    output = get_job(ground, ns, "pick")["status"]["output"]
    assert output["checkpoint"] == "epoch-0002"
    assert output["selection"] == "auto: epoch-0002 has the lowest validation loss (0.0800)"
    assert objects(ground, bucket, base + "final/") == {"kohya.safetensors": b"weights of epoch 2"}
    ground.wait_for(lambda: event_messages(ground, ns, "pick", "CheckpointSelected"), timeout=15, what="an Event")
    assert "auto: epoch-0002 has the lowest validation loss" in event_messages(ground, ns, "pick",
                                                                                 "CheckpointSelected")[0]
    assert len(objects(ground, bucket, base + "checkpoints/")) == 3  # nothing deleted unless asked
    assert kubectl_lora(["--kubeconfig", str(ground.kubeconfig), "describe", "pick", "-n", ns]) == 0
    assert "Selection:  auto: epoch-0002 has the lowest validation loss (0.0800)" in capsys.readouterr().out

    patch({"deleteUnselected": True})  # decided after the run, having looked at the previews
    ground.wait_for(lambda: len(get_job(ground, ns, "pick")["status"]["checkpoints"]) == 1,
                    timeout=30, what=f"the unselected checkpoints gone from status\n{operator.tail()}")
    assert [c["name"] for c in get_job(ground, ns, "pick")["status"]["checkpoints"]] == ["epoch-0002"]
    assert objects(ground, bucket, base + "checkpoints/") == {"epoch-0002/kohya.safetensors": b"weights of epoch 2"}
    assert objects(ground, bucket, base + "final/") == {"kohya.safetensors": b"weights of epoch 2"}
    ground.wait_for(lambda: event_messages(ground, ns, "pick", "CheckpointsDeleted"), timeout=15, what="an Event")
    assert "epoch-0001, epoch-0003" in event_messages(ground, ns, "pick", "CheckpointsDeleted")[0]

    patch({"selectedCheckpoint": "epoch-0001"})  # deleted: said, not crashed on
    ground.wait_for(lambda: "spec.selectedCheckpoint" in (get_job(ground, ns, "pick")["status"].get("message") or ""),
                    timeout=30, what="the selection error in status.message")
    assert "no checkpoint epoch-0001 (checkpoints: epoch-0002)" in get_job(ground, ns, "pick")["status"]["message"]
    assert get_job(ground, ns, "pick")["status"]["output"]["checkpoint"] == "epoch-0002"


def test_a_run_that_stopped_early_succeeds_with_reason_stopped_early(ground, operator, ns):  # noqa: F811
    ground.add_gpu_nodes(1, gpus=1, gpu_type="early", prefix="early")
    ground.apply({**job("early", "early"), "metadata": {"name": "early", "namespace": ns}})
    pod = running_pod(ground, ns, "early")
    why = "stopped early: no better validation loss in 1 evaluations (best 0.0800 at epoch-0002)"
    write_trainer_outputs(ground, *output_prefix(pod), stoppedEarly=why)
    end_pod(ground, ns, pod["metadata"]["name"], 0)
    wait_phase(ground, operator, ns, "early", "Succeeded")
    status = get_job(ground, ns, "early")["status"]
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert (succeeded["reason"], succeeded["message"]) == ("StoppedEarly", why)
    assert event_messages(ground, ns, "early", "StoppedEarly") == [why]


def test_completion_webhooks_are_signed_and_a_failing_receiver_holds_up_no_other_job(ground, operator, ns):  # noqa: F811
    import base64

    from lora_operator.webhook import verify
    from testground.webhook_receiver import Receiver

    receiver = Receiver()
    try:
        receiver.script["/down"] = [500]
        for name, path in (("hook-down", "/down"), ("hook-ok", "/ok")):
            data = {"url": receiver.url(path), "signingKey": f"key-{name}"}
            ground.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                          "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
        ground.add_gpu_nodes(2, gpus=1, gpu_type="hook", prefix="hook")
        for name in ("hook-down", "hook-ok"):
            ground.apply({**job(name, "hook", notify={"webhook": {"secretRef": name}}),
                          "metadata": {"name": name, "namespace": ns}})
        down, ok = running_pod(ground, ns, "hook-down"), running_pod(ground, ns, "hook-ok")
        write_trainer_outputs(ground, *output_prefix(ok))
        end_pod(ground, ns, down["metadata"]["name"], 0)
        ground.wait_for(lambda: len(receiver.calls) >= 2, timeout=60, what=f"a retried webhook\n{operator.tail()}")
        end_pod(ground, ns, ok["metadata"]["name"], 0)
        ground.wait_for(lambda: any(c[0] == "/ok" for c in receiver.calls), timeout=60,
                        what=f"the other job's webhook while the first is retried\n{operator.tail()}")
        path, body, signature, _ = next(c for c in receiver.calls if c[0] == "/ok")
        assert verify(b"key-hook-ok", body, signature) and not verify(b"key-hook-down", body, signature)
        doc = json.loads(body)
        assert (doc["phase"], doc["job"]["name"]) == ("Succeeded", "hook-ok")
        assert [c["name"] for c in doc["checkpoints"]] == ["epoch-0001", "epoch-0002", "epoch-0003"]
        assert all(c["uri"].startswith("s3://") for c in doc["checkpoints"])
        assert sum(1 for c in receiver.calls if c[0] == "/down") >= 2  # retried, not given up at once
    finally:
        receiver.close()

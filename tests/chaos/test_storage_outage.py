"""MinIO stops while a real tiny trainer (kubelet shim) is uploading progress, state and checkpoints.

The trainer's storage calls retry within their budget, so the run rides the outage out: one
attempt, every epoch's checkpoint in the manifest and in storage with the recorded sha256, and the
job Succeeded. The operator's own progress reads fail during the outage and recover after it.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from realrun import BUCKET, RealRun, tiny_job

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

STEPS_PER_EPOCH = 10
OUTAGES = [
    pytest.param(8, id="short-8s"),
    pytest.param(30, id="long-30s", marks=[pytest.mark.chaos, pytest.mark.timeout(900)]),
]
RESULTS: dict[str, dict] = {}


@pytest.mark.parametrize("seconds", OUTAGES)
def test_minio_outage_during_uploads_loses_no_checkpoint_and_the_job_succeeds(own_ground, work, seconds, request):
    ground = own_ground
    ground.add_gpu_nodes(1, gpus=1, gpu_type="outage", prefix="outage")
    run = RealRun.start(ground, work)
    name, epochs = "uploader", 5
    pod, key = f"{name}-a1", f"{run.namespace}/{name}-a1"
    try:
        ground.apply(tiny_job(name, run.namespace, "outage", epochs=epochs, steps_per_epoch=STEPS_PER_EPOCH))
        ground.wait_for(lambda: run.step(name, "state/meta.json") >= STEPS_PER_EPOCH, timeout=240, interval=0.1,
                        what="the first checkpoint and state uploaded")
        before = run.step(name, "progress.json")
        ground.minio.stop()
        stopped = time.monotonic()
        time.sleep(seconds)  # the outage itself: a fixed length is the point of the test
        assert key not in run.shim.exits, "the trainer gave up during the outage"
        ground.minio.start()
        outage = time.monotonic() - stopped
        final = run.wait_finished(name, timeout=300)
    finally:
        run.stop()

    status = final["status"]
    assert status["phase"] == "Succeeded", (json.dumps(status, indent=1)[:3000], run.operator.tail())
    assert len(status["attempts"]) == 1 and run.shim.exits == {key: 0}
    log = run.pod_log(pod)
    assert "retrying in" in log, "no upload hit the outage"
    manifest = run.read(name, "manifest.json")
    assert manifest["finished"] is True
    names = [c["name"] for c in manifest["checkpoints"]]
    assert names == [f"epoch-{e:04d}" for e in range(1, epochs + 1)]
    client = ground.minio.client()
    for entry in manifest["checkpoints"]:
        resp = client.get_object(BUCKET, run.prefix(name) + entry["path"])
        data = resp.read()
        resp.close()
        assert len(data) == entry["sizeBytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert sorted({c["name"] for c in status["checkpoints"]}) == names
    assert status["progress"]["step"] == epochs * STEPS_PER_EPOCH
    RESULTS[request.node.callspec.id] = {"outage_seconds": round(outage, 1), "step_at_stop": before,
                                         "checkpoints": len(names), "attempts": 1,
                                         "upload_retries_logged": log.count("retrying in")}
    print(json.dumps(RESULTS[request.node.callspec.id]))

"""A real tiny trainer (kubelet shim) loses its pod mid-run: OOM-killed, evicted, its node deleted.

Each fault hits after the run saved at least one resume state and went on past it; the retry gets
LORA_RESUME=1, continues from the last saved state (steps lost <= one checkpoint interval), OOM
counts against maxRetries with backoff, disruptions do not, and the job ends Succeeded with every
epoch's checkpoint. The short variant (one OOM kill) runs in `make test`; the long one chains all
three faults in one job.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest
from chaoslib import condition
from realrun import RealRun, tiny_job

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

STEPS_PER_EPOCH = 10
EXPECTED = {  # fault -> (attempt reason, counted)
    "oom": ("Crashed", True),
    "evicted": ("Disrupted", False),
    "node-lost": ("Disrupted", False),
}
FAULTS = [
    pytest.param(["oom"], id="short-oom"),
    pytest.param(["oom", "evicted", "node-lost"], id="long-oom-evicted-node-lost",
                 marks=[pytest.mark.chaos, pytest.mark.timeout(900)]),
]
RESULTS: dict[str, list[dict]] = {}


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def pod_env(run: RealRun, pod: str) -> dict[str, str]:
    body = json.loads(run.ground.kubectl("get", "pod", pod, "-n", run.namespace, "-o", "json").stdout)
    return {e["name"]: e.get("value") for e in body["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("faults", FAULTS)
def test_killed_trainer_resumes_from_its_last_state_and_succeeds(own_ground, work, faults, request):
    ground = own_ground
    nodes = ground.add_gpu_nodes(2, gpus=1, gpu_type="fault", prefix="fault")
    run = RealRun.start(ground, work)
    name, epochs = "victim", len(faults) + 2
    kills: list[dict] = []
    try:
        ground.apply(tiny_job(name, run.namespace, "fault", epochs=epochs, steps_per_epoch=STEPS_PER_EPOCH))
        resumed_from = 0
        for number, fault in enumerate(faults, start=1):
            pod = f"{name}-a{number}"
            key = f"{run.namespace}/{pod}"
            ground.wait_for(lambda k=key: k in run.shim.procs, timeout=120, what=f"{pod} running")
            env = pod_env(run, pod)
            assert env["LORA_ATTEMPT"] == str(number)
            assert env["LORA_RESUME"] == ("1" if number > 1 else "0"), env
            # looked up before the wait, so the kill follows the moment training is seen past a state
            node = json.loads(ground.kubectl("get", "pod", pod, "-n", run.namespace, "-o", "json").stdout)[
                "spec"]["nodeName"]
            # a new resume state of this attempt, and training already past it
            ground.wait_for(lambda after=resumed_from: (s := run.step(name, "state/meta.json")) > after
                            and run.step(name, "progress.json") > s, timeout=180, interval=0.05,
                            what=f"{pod}: a saved state and steps after it")
            if fault == "node-lost":
                ground.kubectl("delete", "node", node, "--wait=false")
            run.shim.kill(run.namespace, pod, fault)
            ground.wait_for(lambda k=key: k in run.shim.exits, timeout=30, what=f"{pod} ended")
            state, reached = run.step(name, "state/meta.json"), run.step(name, "progress.json")
            kills.append({"fault": fault, "pod": pod, "node": node, "state_step": state, "reached_step": reached})
            resumed_from = state
        final = run.wait_finished(name, timeout=300)
    finally:
        run.stop()

    status = final["status"]
    assert status["phase"] == "Succeeded", (json.dumps(status, indent=1)[:3000], run.operator.tail())
    attempts = status["attempts"]
    assert len(attempts) == len(faults) + 1
    for kill, attempt in zip(kills, attempts, strict=False):
        reason, counted = EXPECTED[kill["fault"]]
        assert (attempt["reason"], attempt["counted"]) == (reason, counted), attempt
    assert status.get("retries", 0) == faults.count("oom")
    if "oom" in faults:  # counted, and the next attempt waited for the backoff (2 s)
        i = faults.index("oom")
        oom = attempts[i]
        assert oom["exitCode"] == 137 and "OOMKilled" in oom["message"], oom
        waited = parse(attempts[i + 1]["startTime"]) - parse(oom["endTime"])
        assert waited.total_seconds() >= 1, (oom, attempts[i + 1])
    assert attempts[-1]["reason"] == "TrainingComplete"
    # every retry resumed from the last saved state: at most one checkpoint interval of steps lost
    for number, kill in enumerate(kills, start=2):
        log = run.pod_log(f"{name}-a{number}")
        found = re.search(r"resuming after step (\d+)", log)
        assert found, log[-2000:]
        kill["resumed_at"] = int(found.group(1))
        kill["steps_lost"] = kill["reached_step"] - kill["resumed_at"]
        assert kill["resumed_at"] == kill["state_step"] > 0
        assert 0 < kill["steps_lost"] <= STEPS_PER_EPOCH, kill
    # nothing lost: every epoch's checkpoint in the manifest, in storage, and on the resource
    manifest = run.read(name, "manifest.json")
    assert manifest["finished"] is True
    names = [c["name"] for c in manifest["checkpoints"]]
    assert names == [f"epoch-{e:04d}" for e in range(1, epochs + 1)]
    stored = run.objects(name, "checkpoints/")
    for entry in manifest["checkpoints"]:
        assert stored[entry["path"]] == entry["sizeBytes"] > 0
    assert sorted({c["name"] for c in status["checkpoints"]}) == names
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == epochs * STEPS_PER_EPOCH
    assert condition(final, "Succeeded")["status"] == "True"
    if "node-lost" in faults:
        assert nodes[0] in {k["node"] for k in kills} or nodes[1] in {k["node"] for k in kills}
    RESULTS[request.node.callspec.id] = kills
    print(json.dumps(kills))

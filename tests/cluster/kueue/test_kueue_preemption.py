"""Kueue's preemption costs no training: the real tiny trainer runs a Kueue job's pod on a node whose
kubelet is the shim, a higher-priority job makes Kueue evict it, and it resumes with its steps."""

from __future__ import annotations

import json
import re

import pytest

from cluster.kueue.kueuelib import CONFIG, QUEUE, JobWatch, cluster_queue, flavor, local_queue, steps_logged
from lora_operator.api import API_VERSION, LoraTrainingJob
from lora_operator.render import pod_name

pytestmark = pytest.mark.cluster


def test_a_higher_priority_workload_preempts_a_running_job_which_resumes_with_its_steps(ground, kueue, tmp_path):
    """The real tiny trainer runs a job's Job on a node whose kubelet is the shim. A higher-priority
    job (kueue.x-k8s.io/priority-class) makes Kueue evict it: the Job controller deletes the pod, the
    shim SIGTERMs the trainer, which saves its resume state after the step in flight and exits within
    the grace period. The job shows Queued with Kueue's reason, the attempt is not counted, and once
    readmitted (a new Job whose pod's grace period comes from the measured save time) the trainer
    resumes after the saved step and finishes: at most one step lost."""
    from lora_operator.api.status import Progress
    from lora_operator.grace import termination_grace
    from testground.kubelet_shim import KubeletShim, shim_node
    from testground.operator import KWOK_DATASET, KWOK_MODEL, OperatorProcess, run_kubectl_json, storage_secret
    from testground.seed import make_dataset, upload
    from tinymodels import build_tiny_model

    ns, pool, floor = "kq-pre", {"lora-operator.io/pool": "kq-pre"}, 20
    upload(ground, "s3://models/tiny-sd15/", build_tiny_model("sd15", tmp_path / "tiny-sd15"))
    make_dataset(tmp_path / "dataset", count=4)
    upload(ground, "s3://datasets/kq-pre/", tmp_path / "dataset")
    if not ground.minio.client().bucket_exists("loras"):
        ground.minio.client().make_bucket("loras")
    ground.kubectl("create", "namespace", ns)
    ground.apply(storage_secret(ground, ns))
    ground.apply(shim_node("kq-shim-0", labels=pool))
    kwok_nodes = ground.add_gpu_nodes(1, prefix="kq-pre", labels=pool)
    ground.apply([flavor("kq-pre", pool), cluster_queue("kq-one-node", "kq-pre", 8, preempt=True),
                  local_queue(QUEUE, ns, "kq-one-node")])
    slow = {"apiVersion": API_VERSION, "kind": LoraTrainingJob.KIND, "metadata": {"name": "slow", "namespace": ns},
            "spec": {"queueName": QUEUE, "type": "lora",
                     "baseModel": {"family": "sd15", "uri": "s3://models/tiny-sd15"},
                     "dataset": {"uri": "s3://datasets/kq-pre/", "crop": {"mode": "center", "size": "32x32"}},
                     "network": {"dim": 4, "alpha": 4},
                     "training": {"steps": 30, "epochs": 1, "batchSize": 1, "mixedPrecision": "no",
                                  "gradientCheckpointing": "off"},
                     # no resume state between epoch ends: only the SIGTERM save keeps the steps
                     "checkpoints": {"everyEpochs": 1, "formats": ["kohya"], "stateEverySteps": 0},
                     "previews": {"everyEpochs": 0}, "output": {"uri": "s3://loras/"},
                     "placement": {"nodeSelector": {"type": "shim"}},
                     "retryPolicy": {"maxRetries": 0}}}
    urgent = {"apiVersion": API_VERSION, "kind": LoraTrainingJob.KIND,
              "metadata": {"name": "urgent", "namespace": ns, "labels": {"kueue.x-k8s.io/priority-class": "kq-urgent"}},
              "spec": {"queueName": QUEUE, "baseModel": {"family": "sd15", "uri": KWOK_MODEL},
                       "dataset": {"uri": KWOK_DATASET}, "output": {"uri": "s3://loras/"},
                       "placement": {"nodeSelector": {"type": "kwok"}}}}  # kwok ends its pod at once

    def status(name: str) -> dict:
        return run_kubectl_json(ground, "get", "ltj", "-n", ns, name).get("status") or {}

    watch = JobWatch(ground, ns)
    watch.start()
    op = OperatorProcess(ground, tmp_path / "operator.log", extra_env={
        "LORA_KUEUE_ENABLED": "1", "LORA_TRAINER_TERMINATION_GRACE_SECONDS": str(floor)}).start()
    shim = KubeletShim(ground, tmp_path / "pods", namespaces=frozenset({ns}), nodes=frozenset({"kq-shim-0"}),
                       extra_env={"LORA_PROGRESS_INTERVAL": "0"}).start()
    try:
        ground.apply(slow)
        try:
            ground.wait_for(lambda: status("slow").get("attempts"), timeout=120, what="slow admitted", interval=1)
            first = status("slow")["attempts"][0]["pod"]
            log1 = shim.workdir / f"{ns}_{first}.log"
            ground.wait_for(lambda: log1.exists() and len(steps_logged(log1)) >= 3, timeout=240,
                            what="three steps trained", interval=0.5)
            ground.apply(urgent)
            ground.wait_for(lambda: f"{ns}/{first}" in shim.exits, timeout=120, what="slow's trainer ended",
                            interval=0.5)
            ground.wait_for(lambda: status("urgent").get("phase") == "Succeeded", timeout=120,
                            what="urgent Succeeded", interval=1)
            ground.wait_for(lambda: status("slow").get("phase") in ("Succeeded", "Failed"), timeout=400,
                            what="slow finished", interval=2)
        except TimeoutError:
            raise AssertionError(f"{json.dumps(status('slow'))[:3000]}\n{json.dumps(status('urgent'))[:1500]}"
                                 f"\n--- operator log ---\n{op.tail(80)}") from None
        # the shim ended the deleted pod as a kubelet: SIGTERM, and the trainer exited by itself in time
        ended = shim.terminations[f"{ns}/{first}"]
        assert ended.grace_seconds == floor and not ended.killed and ended.exit_code == 143, (
            ended, log1.read_text(errors="replace")[-3000:])
        done = status("slow")
        assert done["phase"] == "Succeeded", done
        preempted, resumed = done["attempts"]
        assert preempted["reason"] == "Preempted" and preempted["counted"] is False, preempted
        assert "Kueue evicted the Job" in preempted["message"] and done.get("retries", 0) == 0
        # Queued with Kueue's reason (and its Evicted condition mirrored) once the pod had ended
        queued = [s for s in watch.statuses("slow") if s.get("phase") == "Queued" and len(s.get("attempts", [])) == 1
                  and s["attempts"][0].get("endTime")]
        assert queued, [(s.get("phase"), s.get("message")) for s in watch.statuses("slow")]
        admitted = next(c for c in queued[0]["conditions"] if c["type"] == "Admitted")
        assert admitted["status"] == "False" and admitted["reason"] == "Preempted", admitted
        assert queued[0]["message"].startswith("Kueue: "), queued[0]["message"]
        assert any(c["type"] == "KueueEvicted" and c["status"] == "True" for c in queued[0]["conditions"])
        # steps intact: the saved state is the last step attempt 1 trained, and attempt 2 continues after it
        trained = steps_logged(log1)
        log2 = shim.workdir / f"{ns}_{resumed['pod']}.log"
        saved = int(re.search(r"resuming after step (\d+)", log2.read_text()).group(1))
        assert max(trained) - 1 <= saved <= max(trained) < 30, (trained[-3:], saved)
        assert min(steps_logged(log2)) == saved + 1 and max(steps_logged(log2)) == 30
        assert done["progress"]["step"] == 30 and [c["name"] for c in done["checkpoints"]] == ["epoch-0001"]
        # the second attempt's pod got its grace period from the save the trainer measured on SIGTERM
        measured = Progress.model_validate(queued[0]["progress"])
        assert measured.state_save_seconds is not None and measured.step == saved, measured
        expected = termination_grace(CONFIG.model_copy(update={"trainer_termination_grace_seconds": floor}), measured)
        second = run_kubectl_json(ground, "get", "job", pod_name("slow", 2), "-n", ns)
        assert second["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == expected > floor
        assert run_kubectl_json(ground, "get", "ltj", "-n", ns, "urgent")["metadata"]["labels"] == urgent[
            "metadata"]["labels"]
    finally:
        watch.watch.stop()
        shim.stop()
        op.stop()
        ground.kubectl("delete", "namespace", ns, "--wait=false")
        ground.kubectl("delete", "node", "kq-shim-0", *kwok_nodes)
        ground.node_names[:] = [n for n in ground.node_names if n not in kwok_nodes]

"""A real tiny training run for the fault tests: model and dataset in MinIO, an operator, and the
kubelet shim that runs the trainer pods as local processes; readers of the job's storage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from chaoslib import FateShim, make_namespace

from testground.operator import OperatorProcess
from testground.seed import make_dataset, upload
from tinymodels import build_tiny_model

BUCKET = "loras"


def tiny_job(name: str, namespace: str, gpu_type: str, *, epochs: int, steps_per_epoch: int, **extra) -> dict:
    """A tiny SD1.5 LoRA job: 32x32 crops, a kohya checkpoint (and resume state) every epoch, no previews."""
    spec = {
        "type": "lora",
        "baseModel": {"family": "sd15", "uri": "s3://models/tiny-sd15"},
        "dataset": {"uri": "s3://datasets/chaos/", "crop": {"mode": "center", "size": "32x32"}},
        "network": {"dim": 4, "alpha": 4},
        "training": {"steps": epochs * steps_per_epoch, "epochs": epochs, "batchSize": 1, "mixedPrecision": "no",
                     "gradientCheckpointing": "off"},
        "checkpoints": {"everyEpochs": 1, "formats": ["kohya"]},
        "previews": {"everyEpochs": 0},
        "output": {"uri": f"s3://{BUCKET}/"},
        "placement": {"gpuType": gpu_type},
        "retryPolicy": {"maxRetries": 3, "backoffSeconds": 2, "maxBackoffSeconds": 4},
    }
    for key, value in extra.items():
        spec[key] = {**spec[key], **value} if isinstance(spec.get(key), dict) else value
    return {"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@dataclass
class RealRun:
    """The ground seeded for real training, a standalone operator and the shim for one namespace."""

    ground: object
    namespace: str
    operator: OperatorProcess
    shim: FateShim
    uids: dict[str, str] = field(default_factory=dict)
    """Job name -> metadata.uid, read once (the jobs here are never re-created)."""

    @classmethod
    def start(cls, ground, tmp_path: Path, **operator_env: str) -> RealRun:
        upload(ground, "s3://models/tiny-sd15/", build_tiny_model("sd15", tmp_path / "tiny-sd15"))
        make_dataset(tmp_path / "dataset", count=4)
        upload(ground, "s3://datasets/chaos/", tmp_path / "dataset")
        if not ground.minio.client().bucket_exists(BUCKET):
            ground.minio.client().make_bucket(BUCKET)
        ns = make_namespace(ground)
        operator = OperatorProcess(ground, tmp_path / "operator.log", extra_env=operator_env).start()
        shim = FateShim(ground, tmp_path / "pods", namespaces=(ns,)).start()
        return cls(ground, ns, operator, shim)

    def stop(self) -> None:
        self.shim.stop()
        self.operator.stop()

    def job(self, name: str) -> dict:
        return json.loads(self.ground.kubectl("get", "ltj", name, "-n", self.namespace, "-o", "json").stdout)

    def prefix(self, job_name: str) -> str:
        """The key prefix of the job's outputs in BUCKET: <namespace>/<job>/<job UID>/."""
        if job_name not in self.uids:
            self.uids[job_name] = self.job(job_name)["metadata"]["uid"]
        return f"{self.namespace}/{job_name}/{self.uids[job_name]}/"

    def read(self, job_name: str, key: str) -> dict | None:
        """A JSON object of the job's output prefix, or None while it is missing or MinIO is down."""
        try:
            resp = self.ground.minio.client().get_object(BUCKET, self.prefix(job_name) + key)
        except Exception:  # noqa: BLE001
            return None
        try:
            return json.loads(resp.read())
        finally:
            resp.close()
            resp.release_conn()

    def objects(self, job_name: str, prefix: str = "") -> dict[str, int]:
        client, base = self.ground.minio.client(), self.prefix(job_name)
        return {o.object_name[len(base):]: o.size for o in
                client.list_objects(BUCKET, prefix=base + prefix, recursive=True)}

    def step(self, job_name: str, key: str) -> int:
        return int((self.read(job_name, key) or {}).get("step", 0))

    def pod_log(self, pod: str) -> str:
        path = self.shim.workdir / f"{self.namespace}_{pod}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_finished(self, name: str, timeout: float = 300) -> dict:
        self.ground.wait_for(lambda: (self.job(name).get("status") or {}).get("phase") in ("Succeeded", "Failed"),
                             timeout=timeout, what=f"{name} finished", interval=0.5)
        return self.job(name)

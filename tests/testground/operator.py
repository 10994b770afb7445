"""The operator as a real process against the test ground (what `helm install` runs, minus the pod)."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .ground import Ground
from .procs import Proc, free_port

REPO = Path(__file__).resolve().parents[2]
STORAGE_SECRET = "lora-storage"


KWOK_DATASET = "s3://datasets/kwok/"
"""The dataset jobs name when kwok plays their pods: it must hold a file, since the operator
refuses a job whose dataset prefix is empty (DatasetEmpty)."""
KWOK_MODEL = "s3://models/tiny-sd15"
"""The base model they name: the operator refuses a job whose s3:// base model holds nothing
(ModelNotFound), so it must hold a file too."""


def kwok_job(name: str, gpu_type: str, *, namespace: str | None = None, **spec) -> dict:
    """A LoraTrainingJob whose pods kwok runs (nothing trains; the test ends the pods), on nodes of
    `gpu_type`; `spec` adds or replaces top-level spec fields."""
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob", "metadata": metadata,
        "spec": {
            "baseModel": {"family": "sd15", "uri": KWOK_MODEL},
            "dataset": {"uri": KWOK_DATASET},
            "output": {"uri": "s3://loras/"},
            "placement": {"gpuType": gpu_type},
            **spec,
        },
    }


def seed_kwok_dataset(ground: Ground) -> None:
    """Puts one object under `KWOK_DATASET`, and one under `KWOK_MODEL` unless a real model is there."""
    put_kwok_placeholder(ground.minio.client())


def put_kwok_placeholder(client) -> None:
    """One object under `KWOK_DATASET` and, unless a real model is there, under `KWOK_MODEL`: the operator
    checks both exist before admission (`client`: a minio.Minio; buckets made if missing)."""
    for uri in (KWOK_DATASET, KWOK_MODEL):
        bucket, _, prefix = uri.removeprefix("s3://").rstrip("/").partition("/")
        prefix += "/"
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        if uri == KWOK_MODEL and any(client.list_objects(bucket, prefix=prefix)):
            continue
        client.put_object(bucket, f"{prefix}placeholder.txt", io.BytesIO(b"kwok"), 4)


def install_crds(ground: Ground) -> None:
    """Prepares a ground for the operator: the generated CRDs and kopf's peering CRDs, served,
    and the placeholder dataset `KWOK_DATASET`."""
    seed_kwok_dataset(ground)
    ground.kubectl("apply", "-f", str(REPO / "crds"))
    ground.kubectl("apply", "-f", str(REPO / "helm/lora-operator/crds/kopf-peering.yaml"))
    # Right after the apply a CRD may have no status.conditions yet, which `kubectl wait` reports
    # as an error instead of waiting: poll for Established instead.
    def established() -> bool:
        crds = json.loads(ground.kubectl("get", "crd", "-o", "json").stdout)["items"]
        return bool(crds) and all(any(cond.get("type") == "Established" and cond.get("status") == "True"
                                      for cond in (c.get("status") or {}).get("conditions") or ())
                                  for c in crds)

    ground.wait_for(established, timeout=60, what="CRDs Established")


def storage_secret(ground: Ground, namespace: str, name: str = STORAGE_SECRET) -> dict:
    """The Secret trainer pods read their storage credentials from."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "stringData": {"accessKey": ground.minio.access_key, "secretKey": ground.minio.secret_key}}


@dataclass
class OperatorProcess:
    """`lora-operator run` as a child process; `kill()` is a kill -9."""

    ground: Ground
    log: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ("--standalone",)
    metrics_port: int = field(default_factory=free_port)
    proc: Proc | None = None

    def env(self) -> dict[str, str]:
        return {
            "KUBECONFIG": str(self.ground.kubeconfig), "LORA_STORAGE_ENDPOINT": self.ground.minio.endpoint,
            "LORA_STORAGE_SECURE": "false", "LORA_METRICS_PORT": str(self.metrics_port),
            "LORA_PROGRESS_INTERVAL": "1", "LORA_UNSCHEDULABLE_TIMEOUT": "20",
            "LORA_TRAINER_IMAGE": "lora-trainer:test", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer-image")]),
            **self.extra_env,
        }

    def start(self) -> OperatorProcess:
        self.proc = Proc("lora-operator", [sys.executable, "-m", "lora_operator.cli", "run", *self.args],
                         self.log, env=self.env()).start()
        return self

    def kill(self) -> None:
        """SIGKILL, as a crashing node or `kill -9` would."""
        if self.proc and self.proc.popen:
            os.killpg(self.proc.popen.pid, signal.SIGKILL)
            self.proc.popen.wait()
            self.proc.popen = None

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def tail(self, lines: int = 40) -> str:
        return self.proc.tail(lines) if self.proc else ""

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=3) as resp:
            return resp.read().decode()


def run_kubectl_json(ground: Ground, *args: str) -> dict:
    import json

    return json.loads(ground.kubectl(*args, "-o", "json").stdout)


__all__ = ["OperatorProcess", "install_crds", "run_kubectl_json", "storage_secret"]

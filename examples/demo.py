"""`make demo`: the whole product on one machine, with nothing faked but the GPU.

Brings up the test ground (real etcd, kube-apiserver, scheduler, controller-manager, kwok GPU
node, MinIO), installs the CRDs, starts the operator, uploads a tiny random-weight SD1.5 model
to MinIO and a generated dataset with `lora-train upload`, applies examples/demo-job.yaml, lets the trainer pod the
operator creates run for real as a local process, and prints the job as it goes
Queued -> Running -> Succeeded, then where the checkpoints and the preview grid are.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from lora_trainer.cli import main as lora_train
from testground import Ground
from testground.kubelet_shim import KubeletShim
from testground.operator import OperatorProcess, install_crds, storage_secret
from testground.seed import make_dataset, upload
from tinymodels import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "demo-out"
NAMESPACE = "demo"


def show(job: dict) -> str:
    s = job.get("status", {})
    p = s.get("progress") or {}
    where = f"position {s['queuePosition']}" if s.get("queuePosition") else f"node {s.get('node', '-')}"
    loss = f" loss {p['loss']:.4f}" if p.get("loss") is not None else ""
    steps = f"step {p.get('step', 0)}/{p.get('totalSteps', '?')}"
    return (f"{s.get('phase', 'Pending'):<10} {p.get('percent', 0):>3}%  {steps}"
            f"  epoch {p.get('epoch', 0)}/{p.get('totalEpochs', '?')}{loss}  ({where})")


def offer_dashboard(ground: Ground) -> None:
    """Print the `kubectl lora ui` command for this run; where a person ran the demo, keep the
    cluster up for it until Enter (CI, with no terminal, tears down at once)."""
    m = ground.minio
    print("== the dashboard of this run (while the cluster is up):\n"
          f"   kubectl lora ui --kubeconfig {ground.kubeconfig} -n {NAMESPACE} --s3-endpoint {m.endpoint} "
          f"--access-key {m.access_key} --secret-key {m.secret_key} --no-s3-secure")
    if sys.stdin.isatty():
        input("   then open http://127.0.0.1:8765/ ; press Enter here to tear the cluster down ")


def main() -> int:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="lora-demo-"))
    print("== bringing up the local control plane, a kwok GPU node and MinIO")
    ground = Ground.up(work / "ground", gpu_nodes=1, gpus=1, build=True)
    operator = shim = None
    try:
        print(f"   up in {ground.startup_seconds:.1f}s; KUBECONFIG={ground.kubeconfig}")
        install_crds(ground)
        print("== uploading a tiny random-weight SD1.5 model to MinIO")
        upload(ground, "s3://models/tiny-sd15/", build_tiny_model("sd15", work / "tiny-sd15"))
        make_dataset(work / "dataset")
        if not ground.minio.client().bucket_exists("datasets"):
            ground.minio.client().make_bucket("datasets")
        print("== lora-train upload: the 6-image dataset, checked as the trainer will read it")
        if lora_train(["upload", str(work / "dataset"), "s3://datasets/demo/", "--job",
                       str(REPO / "examples/demo-job.yaml")], ground.env()) != 0:
            raise SystemExit("demo: the dataset upload failed")
        ground.minio.client().make_bucket("loras")
        ground.kubectl("create", "namespace", NAMESPACE)
        ground.apply(storage_secret(ground, NAMESPACE))
        print("== starting the operator and the kubelet shim (runs trainer pods as local processes)")
        operator = OperatorProcess(ground, work / "operator.log").start()
        shim = KubeletShim(ground, work / "pods").start()
        ground.kubectl("apply", "-n", NAMESPACE, "-f", str(REPO / "examples/demo-job.yaml"))
        last, deadline = "", time.monotonic() + 900
        while time.monotonic() < deadline:
            job = json.loads(ground.kubectl("get", "ltj", "demo", "-n", NAMESPACE, "-o", "json").stdout)
            line = show(job)
            if line != last:
                print(f"   [{time.monotonic() - started:6.1f}s] {line}")
                last = line
            if job.get("status", {}).get("phase") in ("Succeeded", "Failed", "Cancelled"):
                break
            time.sleep(1)
        status = job.get("status", {})
        if status.get("phase") != "Succeeded":
            print(f"!! the job ended {status.get('phase')}: {status.get('message')}\n{operator.tail()}")
            for log in (work / "pods").glob("*.log"):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}")
            return 1
        print("== checkpoints")
        for c in status.get("checkpoints", []):
            print(f"   {c['name']} {c['format']:<9} {c['uri']}  val-loss={c.get('validationLoss')}")
        OUT.mkdir(exist_ok=True)
        grids = [p["grid"] for p in status.get("previews", []) if p.get("grid")]
        for grid in sorted(set(grids)):
            bucket, key = grid[len("s3://"):].split("/", 1)
            target = OUT / key.replace("/", "_")
            ground.minio.client().fget_object(bucket, key, str(target))
            print(f"   preview grid {grid} -> {target}")
        print(f"== done in {time.monotonic() - started:.0f}s: pick an epoch with "
              f"`kubectl patch ltj demo --type=merge -p '{{\"spec\":{{\"selectedCheckpoint\":\"epoch-0002\"}}}}'`")
        offer_dashboard(ground)
        return 0
    finally:
        if shim:
            shim.stop()
        if operator:
            operator.stop()
        ground.down()


if __name__ == "__main__":
    sys.exit(main())

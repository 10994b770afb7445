"""`make demo`: the whole product on one machine, with nothing faked but the GPU.

Brings up the test ground (real etcd, kube-apiserver, scheduler, controller-manager, kwok GPU
node, MinIO), installs the CRDs, starts the operator, uploads the tiny base pretrained on the
procedural world (tests/tinyworld, `make tinybase`; Flux topology) to MinIO and a concept it never
saw (16 magenta crosses captioned with the trigger word "zxq") with `lora-train upload`, applies
examples/demo-concept-job.yaml, lets the trainer pod the operator creates run for real as a local
process, and prints the job as it goes Queued -> Running -> Succeeded. It ends with a before/after
contact sheet, demo-out/sheet.png: the base, then each epoch's LoRA (downloaded from MinIO), on the
trigger prompt and a control prompt, the same seeds in every row.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from lora_operator.storage import open_store
from lora_trainer.cli import main as lora_train
from testground import Ground
from testground.kubelet_shim import KubeletShim
from testground.operator import OperatorProcess, install_crds, storage_secret
from testground.seed import upload
from tinyworld.cache import tinybase
from tinyworld.concept import CONTROL_PROMPTS, TRIGGER_PROMPTS, write_concept_set
from tinyworld.sheet import contact_sheet

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "demo-out"
NAMESPACE = "demo"
JOB = REPO / "examples/demo-concept-job.yaml"
BASE = "flow"
"""The tiny base the demo's job trains on (tests/tinyworld/cache.py RECIPES): the Flux-topology one."""
SHEET_SEEDS = [0, 1, 2, 3]


def show(job: dict) -> str:
    s = job.get("status", {})
    p = s.get("progress") or {}
    where = f"position {s['queuePosition']}" if s.get("queuePosition") else f"node {s.get('node', '-')}"
    loss = f" loss {p['loss']:.4f}" if p.get("loss") is not None else ""
    steps = f"step {p.get('step', 0)}/{p.get('totalSteps', '?')}"
    return (f"{s.get('phase', 'Pending'):<10} {p.get('percent', 0):>3}%  {steps}"
            f"  epoch {p.get('epoch', 0)}/{p.get('totalEpochs', '?')}{loss}  ({where})")


def download(ground: Ground, uri: str, target: Path) -> Path:
    """Everything under the s3:// prefix `uri` into `target`; a file's URI (a diffusers checkpoint's names
    its pytorch_lora_weights.safetensors) brings the folder it is in."""
    if uri.endswith(".safetensors"):
        uri = uri.rpartition("/")[0]
    m = ground.minio
    store = open_store(uri.rstrip("/") + "/", endpoint=m.endpoint, access_key=m.access_key,
                       secret_key=m.secret_key, secure=False)
    store.download_prefix("", target)
    return target


def before_after_sheet(ground: Ground, base: Path, checkpoints: list[dict], work: Path) -> Path:
    """Sample the base and each epoch's diffusers LoRA from MinIO; write demo-out/sheet.png, return its path."""
    loras = [(f"epoch {c['epoch']}", download(ground, c["uri"], work / c["name"]))
             for c in sorted(checkpoints, key=lambda c: c["epoch"]) if c["format"] == "diffusers"]
    sheet = contact_sheet(base, loras, TRIGGER_PROMPTS[0], CONTROL_PROMPTS[0], SHEET_SEEDS)
    OUT.mkdir(exist_ok=True)
    sheet.save(OUT / "sheet.png")
    return OUT / "sheet.png"


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
        print(f"== uploading the tiny {BASE} base pretrained on the procedural world (`make tinybase`) to MinIO")
        base = tinybase(BASE)
        upload(ground, f"s3://models/tinyworld-{BASE}/", base)
        write_concept_set(work / "dataset")
        if not ground.minio.client().bucket_exists("datasets"):
            ground.minio.client().make_bucket("datasets")
        print("== lora-train upload: 16 images of a concept the base never saw (a magenta cross, trigger 'zxq')")
        if lora_train(["upload", str(work / "dataset"), "s3://datasets/concept/", "--job", str(JOB)],
                      ground.env()) != 0:
            raise SystemExit("demo: the dataset upload failed")
        ground.minio.client().make_bucket("loras")
        ground.kubectl("create", "namespace", NAMESPACE)
        ground.apply(storage_secret(ground, NAMESPACE))
        print("== starting the operator and the kubelet shim (runs trainer pods as local processes)")
        operator = OperatorProcess(ground, work / "operator.log").start()
        shim = KubeletShim(ground, work / "pods").start()
        ground.kubectl("apply", "-n", NAMESPACE, "-f", str(JOB))
        last, deadline = "", time.monotonic() + 1800
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
        sheet = before_after_sheet(ground, base, status.get("checkpoints", []), work / "checkpoints")
        print(f"== before/after contact sheet (base, then each epoch; '{TRIGGER_PROMPTS[0]}' left,"
              f" '{CONTROL_PROMPTS[0]}' right): {sheet}")
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

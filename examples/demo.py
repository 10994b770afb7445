"""`make demo`: the whole product on one machine, with nothing faked but the GPU.

Brings up the test ground (real etcd, kube-apiserver, scheduler, controller-manager, kwok GPU
node, MinIO), installs the CRDs, starts the operator, uploads the tiny base pretrained on the
procedural world (tests/tinyworld, `make tinybase`; Flux topology) to MinIO and a concept it never
saw (16 magenta crosses captioned with the trigger word "zxq") with `lora-train upload`, applies
examples/demo-concept-job.yaml, lets the trainer pod the operator creates run for real as a local
process, and prints the job as it goes Queued -> Running -> Succeeded. It ends with a before/after
contact sheet, demo-out/sheet.png: the base, then each epoch's LoRA (downloaded from MinIO), on the
trigger prompt and a control prompt, the same seeds in every row: the prompts and seeds of the job's
previews, so the sheet's row of an epoch shows the samples the dashboard's column of that epoch shows.
Then it starts `kubectl lora ui`, checks in Chromium that the page lists the job as Succeeded and loads
every epoch's previews (screenshots in demo-out/), and prints the command.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lora_operator.storage import open_store
from lora_trainer.cli import main as lora_train
from testground import Ground
from testground.dashboard import DashboardError, check_job_shown, preview_samples, start_ui
from testground.kubelet_shim import KubeletShim
from testground.operator import OperatorProcess, install_crds, storage_secret
from testground.seed import upload
from tinyworld.cache import tinybase
from tinyworld.concept import write_concept_set, write_prior_set
from tinyworld.sheet import contact_sheet

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "demo-out"
NAMESPACE = "demo"
JOB = REPO / "examples/demo-concept-job.yaml"
BASE = "flow"
"""The tiny base the demo's job trains on (tests/tinyworld/cache.py RECIPES): the Flux-topology one."""



def job_spec() -> dict:
    """The spec of the demo's job file (the sheet's prompts and seeds, the prior set's URI)."""
    return yaml.safe_load(JOB.read_text())["spec"]


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
    """Sample the base and each epoch's diffusers LoRA from MinIO at the job's preview prompts (the trigger
    prompt, then the control prompt) and seeds; write demo-out/sheet.png, return its path."""
    (trigger, control), seeds = preview_samples(job_spec())
    loras = [(f"epoch {c['epoch']}", download(ground, c["uri"], work / c["name"]))
             for c in sorted(checkpoints, key=lambda c: c["epoch"]) if c["format"] == "diffusers"]
    sheet = contact_sheet(base, loras, trigger, control, seeds)
    OUT.mkdir(exist_ok=True)
    sheet.save(OUT / "sheet.png")
    return OUT / "sheet.png"


def show_dashboard(ground: Ground, spec: dict, log: Path) -> int:
    """Start `kubectl lora ui`, check in Chromium that it shows the finished demo job with every epoch's
    previews (the sheet's prompts and seeds), print what it saw and the command; 1 where it did not."""
    try:
        ui = start_ui(ground, NAMESPACE, log)
    except DashboardError as e:
        print(f"!! the dashboard did not start: {e}")
        return 1
    try:
        seen = check_job_shown(ui.url, "demo", spec, OUT)
        print(f"== the dashboard at {seen.url}/ shows ltj/demo {seen.phase}, {len(seen.previews)} epochs of "
              f"previews (the sheet's prompts and seeds): {seen.job_shot.relative_to(REPO)}")
        print("== the dashboard of this run (while the cluster is up):\n"
              f"   {ui.command}")
        if sys.stdin.isatty():
            input(f"   it is running now: open {ui.url}/ ; press Enter here to tear the cluster down ")
        return 0
    except DashboardError as e:
        print(f"!! the dashboard did not show the demo job: {e}\n{ui.proc.tail()}")
        return 1
    finally:
        ui.stop()


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
        prior = job_spec()["dataset"]["regularization"]["uri"]
        print(f"== prior preservation: 16 of the base's own samples of other scenes -> {prior}")
        upload(ground, prior, write_prior_set(base, work / "prior"))
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
        trigger, control = preview_samples(job["spec"])[0]
        print(f"== before/after contact sheet (base, then each epoch; '{trigger}' left, '{control}' right): {sheet}")
        print(f"== done in {time.monotonic() - started:.0f}s: pick an epoch with "
              f"`kubectl patch ltj demo --type=merge -p '{{\"spec\":{{\"selectedCheckpoint\":\"epoch-0002\"}}}}'`")
        return show_dashboard(ground, job["spec"], work / "ui.log")
    finally:
        if shim:
            shim.stop()
        if operator:
            operator.stop()
        ground.down()


if __name__ == "__main__":
    sys.exit(main())

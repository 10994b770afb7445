"""Cold vs warm start of a trainer (issue 22): seconds from the trainer's start to its first step,
with an empty node cache and with the cache the previous run filled.

What it runs: the real `lora-train run` as a pod would (the spec in LORA_JOB_SPEC, a real MinIO
from the test ground's tools, the base model in s3://), once per cache state, in this order:
cold (a fresh LORA_CACHE_DIR), then warm (the same folder again). The clock starts when the
process is spawned (a pod's container start; the operator's admission and the kubelet's pull come
before it and are equal for both) and stops when progress.json first shows step 1, polled every
50 ms (progress written every 0.1 s). The trainer is stopped there. manifest.json gives what the
fetch found: hit or miss, bytes, seconds.

    python bench/cold_start.py --family sd15 --runs 1 [--json out.json]

Tiny models (tests/tinymodels) on CPU are what the repository can run anywhere; the difference
there is mostly the download and the torch import. A full-size model shows the download cost
(`--model-dir` uploads a local diffusers folder instead of building a tiny one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from lora_operator.api import resolve_spec  # noqa: E402
from lora_operator.api.contract import MANIFEST_KEY, PROGRESS_KEY, TrainerEnv  # noqa: E402
from lora_operator.storage import open_store  # noqa: E402
from testground import MinioServer, tools_dir  # noqa: E402
from testground.seed import make_dataset  # noqa: E402
from tinymodels import build_tiny_model  # noqa: E402

POLL = 0.05


def spec(family: str, model_uri: str) -> dict:
    return resolve_spec({
        "baseModel": {"family": family, "uri": model_uri},
        "dataset": {"uri": "s3://datasets/bench/", "crop": {"mode": "center", "size": "32x32"}},
        "network": {"dim": 4, "alpha": 4},
        "training": {"steps": 50, "epochs": 1, "batchSize": 1, "mixedPrecision": "no",
                     "gradientCheckpointing": "off"},
        "previews": {"everyEpochs": 0},
        "output": {"uri": "s3://loras/"},
    }).to_resource()


def first_step(minio: MinioServer, job_spec: dict, cache: Path, workdir: Path) -> dict:
    """One trainer run until its first step: seconds, and its manifest's model records."""
    uid = uuid.uuid4().hex
    prefix = f"s3://loras/bench/cold-start/{uid}/"
    job = TrainerEnv(output_prefix=prefix, job_uid=uid, job_name="cold-start", job_namespace="bench",
                     cache_dir=str(cache), progress_interval=0.1)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("LORA_", "AWS_", "S3_"))},
           **minio.env(), **job.to_env(), "LORA_JOB_SPEC": json.dumps(job_spec), "LORA_NODE_NAME": "bench-node"}
    store = open_store(prefix, endpoint=minio.endpoint, access_key=minio.access_key,
                       secret_key=minio.secret_key, secure=False)
    binary = shutil.which("lora-train", path=str(Path(sys.executable).parent)) or "lora-train"
    log = (workdir / f"{uid}.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen([binary, "run", "--spec-env", "LORA_JOB_SPEC"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=workdir)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"trainer exited {proc.returncode} before its first step: see {log.name}")
            try:
                progress = json.loads(store.get_bytes(PROGRESS_KEY))
            except Exception:  # noqa: BLE001 - not written yet
                progress = {}
            if progress.get("step", 0) >= 1:
                seconds = time.monotonic() - started
                break
            time.sleep(POLL)
    finally:
        proc.kill()
        proc.wait()
        log.close()
    models = json.loads(store.get_bytes(MANIFEST_KEY)).get("models", [])
    return {"seconds_to_first_step": round(seconds, 2), "models": models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="sd15")
    parser.add_argument("--runs", type=int, default=1, help="cold+warm pairs")
    parser.add_argument("--model-dir", type=Path, help="a diffusers folder to upload instead of a tiny model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lora-cold-start-"))
    minio = MinioServer(tools_dir() / "minio", work / "minio-data", work / "minio.log").start()
    try:
        model_dir = args.model_dir or build_tiny_model(args.family, work / "model")
        model_uri = f"s3://models/bench-{args.family}/"
        client = minio.client()
        for bucket in ("models", "datasets", "loras"):
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
        for uri, folder in ((model_uri, model_dir), ("s3://datasets/bench/", work / "dataset")):
            if uri.startswith("s3://datasets"):
                make_dataset(folder)
            open_store(uri, endpoint=minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key,
                       secure=False).upload_dir(folder)
        job_spec = spec(args.family, model_uri)
        rows = []
        for run in range(args.runs):
            cache = work / f"cache-{run}"
            for state in ("cold", "warm"):
                row = {"run": run, "cache": state, **first_step(minio, job_spec, cache, work)}
                rows.append(row)
                fetched = row["models"][0] if row["models"] else {}
                print(f"{state}: {row['seconds_to_first_step']:.2f} s to the first step; model "
                      f"{'hit' if fetched.get('hit') else 'miss'}, {fetched.get('bytes', 0)} bytes in "
                      f"{fetched.get('seconds', 0):.2f} s", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
    finally:
        minio.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

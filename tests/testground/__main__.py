"""`python -m testground up|down|status|env|seed` — the test ground for people (make cluster-up/down).

`env` prints the shell exports that point kubectl, kubectl lora and the operator at a recorded
ground (`eval "$(python -m testground env)"`); `seed` puts the buckets and the placeholder
dataset a kwok-run job needs into its MinIO. The README's "test ground by hand" uses both.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .ground import Ground
from .operator import KWOK_DATASET, put_kwok_placeholder
from .procs import stop_pid

DEFAULT_WORKDIR = Path(__file__).resolve().parents[2] / ".cache" / "ground"


SEED_BUCKETS = ("datasets", "models", "loras")


def exports(recorded: dict) -> dict[str, str]:
    """KUBECONFIG, the storage settings of kubectl lora (S3_*, AWS_*) and of the operator (LORA_STORAGE_*:
    its endpoint only; the operator uses each job's own Secret, it has no key)."""
    minio = recorded["minio"]
    return {"KUBECONFIG": recorded["kubeconfig"],
            "S3_ENDPOINT": minio["endpoint"], "S3_SECURE": "false",
            "AWS_ACCESS_KEY_ID": minio["accessKey"], "AWS_SECRET_ACCESS_KEY": minio["secretKey"],
            "LORA_STORAGE_ENDPOINT": minio["endpoint"], "LORA_STORAGE_SECURE": "false"}


def seed(recorded: dict) -> None:
    """The buckets a job on the ground reads and writes, and one object under KWOK_DATASET (the
    operator refuses a job whose dataset prefix is empty; kwok runs no trainer to read more)."""
    from minio import Minio

    minio = recorded["minio"]
    client = Minio(minio["endpoint"], minio["accessKey"], minio["secretKey"], secure=False)
    for bucket in SEED_BUCKETS:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
    put_kwok_placeholder(client)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testground", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env", "seed"])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--gpu-nodes", type=int, default=3)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--build", action="store_true", help="build missing binaries first")
    args = parser.parse_args(argv)
    state = args.workdir / "ground.json"
    if args.command == "up":
        if state.exists():
            print(f"a ground is already recorded in {state}; run `make cluster-down` first", file=sys.stderr)
            return 1
        ground = Ground.up(args.workdir, gpu_nodes=args.gpu_nodes, gpus=args.gpus, build=args.build)
        print(f"test ground up in {ground.startup_seconds:.1f}s")
        print(f"  export KUBECONFIG={ground.kubeconfig}")
        print(f"  MinIO: http://{ground.minio.endpoint} ({ground.minio.access_key} / {ground.minio.secret_key})")
        print(f"  {args.gpu_nodes} kwok GPU nodes x {args.gpus} nvidia.com/gpu; logs in {args.workdir}")
        return 0
    if not state.exists():
        print("no test ground recorded", file=sys.stderr)
        return 0 if args.command == "down" else 1
    recorded = json.loads(state.read_text())
    if args.command == "status":
        print(json.dumps(recorded, indent=2))
        return 0
    if args.command == "env":
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in exports(recorded).items()))
        return 0
    if args.command == "seed":
        seed(recorded)
        print(f"seeded {KWOK_DATASET} and the buckets {', '.join(SEED_BUCKETS)}")
        return 0
    for name, pid in recorded["pids"].items():
        if pid:
            stop_pid(pid)
            print(f"stopped {name} ({pid})")
    state.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m testground up|down|status` — the test ground for people (make cluster-up/down)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .ground import Ground
from .procs import stop_pid

DEFAULT_WORKDIR = Path(__file__).resolve().parents[2] / ".cache" / "ground"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testground", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
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
    for name, pid in recorded["pids"].items():
        if pid:
            stop_pid(pid)
            print(f"stopped {name} ({pid})")
    state.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())

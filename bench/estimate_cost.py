"""CPU seconds of one queue-start estimate (`Controller.estimate_starts`' simulation) by queue length.

    PYTHONPATH=operator .venv/bin/python bench/estimate_cost.py --queued 1000 5000

The simulation runs in the position writer's thread, in Python, beside the scheduling pass and
kopf's loop: its CPU is time they wait for the GIL. Nodes in the scale bench's pools, each running
a job with a known ETA and run time (so every simulated pass frees a node), and `--queued`
waiting jobs over 10 namespaces and four priorities; seeded.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime

from lora_operator.api import resolve_spec
from lora_operator.controller import ESTIMATE_PASSES, estimate_passes
from lora_operator.scheduling import GpuNode
from lora_operator.start_estimates import simulated_starts

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LABEL = "lora-operator.io/gpu-type"
POOLS = (("h100", 8, 0.4), ("a100", 8, 0.3), ("l40s", 4, 0.2), ("a10", 1, 0.1))


def gpu_nodes(count: int) -> list[GpuNode]:
    return [GpuNode(f"{kind}-{i}", True, True, gpus, {LABEL: kind})
            for kind, gpus, share in POOLS for i in range(max(1, round(count * share)))]


def bodies(queued: int, nodes: list[GpuNode], rng: random.Random) -> list[dict]:
    spec = resolve_spec({"baseModel": {"family": "sd15", "uri": "s3://m/sd15"}, "dataset": {"uri": "s3://d/x/"},
                         "output": {"uri": "s3://o/"}}).to_resource()
    jobs = [{"metadata": {"uid": f"r{i}", "name": f"r{i}", "namespace": f"team-{i % 10}"}, "spec": {},
             "status": {"phase": "Running", "node": node.name,
                        "progress": {"etaSeconds": rng.uniform(10, 600), "updatedAt": "2026-01-01T12:00:00Z",
                                     "stepsPerSecond": 1.0, "totalSteps": 300}}}
            for i, node in enumerate(nodes)]
    for i in range(queued):
        created = f"2026-01-01T{i // 3600 % 12:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"
        jobs.append({"metadata": {"uid": f"q{i}", "name": f"q{i:05d}", "namespace": f"team-{rng.randrange(10)}",
                                  "creationTimestamp": created},
                     "spec": {"priority": rng.choice([0, 0, 0, 1, 5, 10])},
                     "status": {"phase": "Queued", "resolvedSpec": spec}})
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--nodes", type=int, default=100)
    args = parser.parse_args()
    nodes = gpu_nodes(args.nodes)
    for queued in args.queued:
        jobs = bodies(queued, nodes, random.Random(1))
        for passes in sorted({ESTIMATE_PASSES, estimate_passes(queued)}, reverse=True):
            began = time.process_time()
            starts = simulated_starts(jobs, nodes, NOW, gpu_type_label=LABEL, max_passes=passes)
            print(f"{queued} queued, {len(nodes)} nodes, {passes} passes: "
                  f"{time.process_time() - began:.2f} s CPU, {len(starts)} jobs estimated", flush=True)


if __name__ == "__main__":
    main()

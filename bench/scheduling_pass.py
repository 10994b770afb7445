"""CPU per scheduling pass, per queue-position round and per start estimate of the operator's
controller in the drain of a long queue, in process (no API server).

    python -m bench.scheduling_pass --jobs 10000 --nodes 1000 [--kwok-labels] [--profile]

A real `Controller` over a real `JobIndex` is fed slim job and pod bodies like the watch's (the
scale bench's pools, namespaces, priorities and GPU types: `operator_scale`), every node running a
job and the rest queued. Then the drain, step by step: `--free` running jobs end (their pods
finish and go), one pass runs, and the jobs it admitted start as the watch would show them (the
claims themselves go to a fake API server that loses them, so no API call is timed). After each
pass one position round runs (`Controller.write_positions`, as the position writer does after
each pass), and every `--estimate-every` steps the queue is played forward (`estimate_starts`).
The pass is timed on its own thread's CPU clock (`time.thread_time`): the claims the pass hands
to its pool are not in it. `--kwok-labels` labels the nodes as the test ground's kwok nodes (and
kubelets) are, by hostname among others: each free node is then a class of the free pool of its
own. With `--jobs` no more than `--nodes`, the queue empties and the steps play the drain's tail.
Seeded.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from lora_operator import status_transitions as st
from lora_operator.api import JobStatus, resolve_spec
from lora_operator.config import OperatorConfig
from lora_operator.controller import Controller
from lora_operator.k8s import Conflict
from lora_operator.metrics import OperatorMetrics
from lora_operator.own_writes import OwnWrites
from lora_operator.scheduling import GpuNode
from lora_operator.views import JOB_UID_LABEL, slim_job, slim_pod

START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
LABEL = "lora-operator.io/gpu-type"
POOLS = (("h100", 8, 0.4), ("a100", 8, 0.3), ("l40s", 4, 0.2), ("a10", 1, 0.1))
"""GPU type, GPUs per node, share of the nodes (as `operator_scale`)."""
PRIORITIES = ((0, 0.6), (1, 0.2), (5, 0.15), (10, 0.05))
CONSTRAINED_SHARE = 0.3
SUBMIT_PER_SECOND = 84
"""Jobs per creationTimestamp second (the scale bench's submission rate): FIFO ties are common."""


class LosingKube:
    """The API server as the controller sees it here: every claim loses to a change of its job
    (so the bench applies admissions itself), every position write succeeds and comes back as the
    watch would show it (`wrote`)."""

    def __init__(self) -> None:
        self.own_writes = OwnWrites()
        self.position_writes = 0
        self.estimate_writes = 0
        self.wrote: Callable[[str, dict], None] = lambda name, fields: None

    def patch_job_status(self, namespace: str, name: str, status: dict, resource_version: str | None = None):
        if "conditions" in status:
            raise Conflict(name)
        self.position_writes += "queuePosition" in status
        self.estimate_writes += "queue" in status
        self.wrote(name, status)
        return None

    def get_job(self, namespace: str, name: str) -> None:
        return None

    def list_job_uids(self, namespace: str | None, chunk: int) -> list[str]:
        return []


def nodes_of(count: int, *, kwok_labels: bool = False) -> list[GpuNode]:
    """`count` nodes of the pools; with `kwok_labels`, labelled as the test ground's kwok nodes are
    (`kubernetes.io/hostname` among them: each node is then a free-pool class of its own)."""
    nodes = []
    for kind, gpus, share in POOLS:
        for i in range(max(1, round(count * share))):
            name = f"{kind}-{i}"
            labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                      "type": "kwok"} if kwok_labels else {}
            nodes.append(GpuNode(name, True, True, gpus, {**labels, LABEL: kind}))
    return nodes[:count] if len(nodes) > count else nodes


@dataclass
class Drain:
    """The controller and the cluster state the bench plays (job bodies, pods, nodes)."""

    controller: Controller
    nodes: list[GpuNode]
    jobs: dict[str, dict] = field(default_factory=dict)
    pods: dict[str, list[dict]] = field(default_factory=dict)
    running: dict[str, str] = field(default_factory=dict)
    """Running job uid -> its node."""
    rng: random.Random = field(default_factory=random.Random)
    clock: datetime = START
    rv: int = 0

    def _version(self) -> str:
        self.rv += 1
        return str(self.rv)

    def put_job(self, uid: str, body: dict) -> None:
        body["metadata"]["resourceVersion"] = self._version()
        self.controller.job_event(uid, slim_job(body))
        self.jobs[uid] = body

    def write_status(self, uid: str, fields: dict) -> None:
        body = self.jobs[uid]
        self.put_job(uid, {**body, "status": {**body["status"], **fields}})

    def put_pod(self, uid: str, pod: dict | None, *, deleted: bool = False) -> None:
        if deleted:
            self.pods.pop(uid, None)
        else:
            self.pods[uid] = [slim_pod(pod)]
        self.controller.pod_changed(pod, deleted=deleted)

    def start(self, uid: str, node: GpuNode) -> None:
        body = self.jobs[uid]
        status = JobStatus.model_validate(body["status"])
        attempt = status.attempt + 1
        pod_name = f"{body['metadata']['name']}-a{attempt}"
        status = st.pod_running(st.admitted(status, node=node.name, gpus=node.gpus, pod=pod_name, attempt=attempt,
                                            now=self.clock), now=self.clock)
        self.put_job(uid, {**body, "status": status.to_resource()})
        pod = {"metadata": {"name": pod_name, "namespace": body["metadata"]["namespace"],
                            "labels": {JOB_UID_LABEL: uid}, "resourceVersion": self._version()},
               "spec": {"nodeName": node.name}, "status": {"phase": "Running"}}
        self.put_pod(uid, pod)
        self.running[uid] = node.name

    def end(self, uid: str) -> None:
        body = self.jobs[uid]
        pod = self.pods[uid][0]
        self.put_pod(uid, {**pod, "status": {"phase": "Succeeded"}})
        self.put_pod(uid, pod, deleted=True)
        self.put_job(uid, {**body, "status": {**body["status"], "phase": "Succeeded"}})
        del self.running[uid]

    def step(self, free: int) -> tuple[float, Any]:
        """`free` running jobs end, one pass, its admissions start; returns the pass's CPU ms and plan."""
        self.clock += timedelta(seconds=1)
        for uid in self.rng.sample(sorted(self.running), min(free, len(self.running))):
            self.end(uid)
        ms, plan = timed(self.controller.run_pass)
        self.settle()
        by_name = {n.name: n for n in self.nodes}
        for admission in plan.admissions:
            self.start(admission.job_uid, by_name[admission.node])
        return ms, plan

    def settle(self) -> None:
        """Waits until the pass's claims are settled (lost): they give their nodes back."""
        self.controller.admitter.claims._settled.wait(60)


def build(jobs: int, nodes: int, seed: int, config: OperatorConfig, *, positions_written: bool = False,
          kwok_labels: bool = False) -> Drain:
    """Every node running a job, the other jobs queued (Resolved, Admitted False), all in the index;
    with `positions_written`, each showing its queue position."""
    rng = random.Random(seed)
    controller = Controller(LosingKube(), config, OperatorMetrics(), lambda *a: None)  # type: ignore[arg-type]
    node_list = nodes_of(nodes, kwok_labels=kwok_labels)
    drain = Drain(controller, node_list, rng=random.Random(seed + 1))
    controller.bind({}, drain.pods, {n.name: [n] for n in node_list})
    types = [t for t, _, _ in POOLS]
    weights = [s for _, _, s in POOLS]
    spec = resolve_spec({"baseModel": {"family": "sd15", "uri": "s3://models/tiny-sd15"},
                         "dataset": {"uri": "s3://datasets/scale/"}, "output": {"uri": "s3://loras/"}})
    queued_status = st.queued(JobStatus(), position=None, now=START).to_resource()
    for i in range(jobs):
        gpu_type = rng.choices(types, weights)[0] if rng.random() < CONSTRAINED_SHARE else None
        resolved = spec.to_resource()
        if gpu_type:
            resolved["placement"] = {**resolved.get("placement", {}), "gpuType": gpu_type}
        created = START - timedelta(seconds=(jobs - i) // SUBMIT_PER_SECOND)
        uid = f"uid-{i:05d}"
        body = {"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
                "metadata": {"name": f"job-{i:05d}", "namespace": f"team-{rng.randrange(10):02d}", "uid": uid,
                             "generation": 1, "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ")},
                "spec": {"priority": rng.choices([p for p, _ in PRIORITIES], [w for _, w in PRIORITIES])[0]},
                "status": {**queued_status, "resolvedSpec": resolved}}
        drain.put_job(uid, body)
    by_name = {body["metadata"]["name"]: uid for uid, body in drain.jobs.items()}
    controller.positions.kube.wrote = lambda name, fields: drain.write_status(by_name[name], fields)
    drain.step(0)  # the drain's start: the first pass fills every node
    if positions_written:  # as if the position writer had caught up: each job shows its position
        plan = controller.run_pass()  # the running jobs' turns are in this pass's order, not the first's
        drain.settle()
        for uid, position in dict(plan.positions).items():
            drain.write_status(uid, {"queuePosition": position})
    return drain


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(CPU ms of this thread, result) of fn()."""
    began = time.thread_time()
    out = fn()
    return (time.thread_time() - began) * 1000, out


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"n": len(ms), "min_ms": round(ordered[0], 3), "median_ms": round(statistics.median(ordered), 3),
            "mean_ms": round(statistics.mean(ordered), 3),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3), "max_ms": round(ordered[-1], 3)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    limits = json.loads(args.limits) if args.limits else {}
    config = OperatorConfig(namespace_node_limits=limits)
    began = time.perf_counter()
    drain = build(args.jobs, args.nodes, args.seed, config, positions_written=args.positions_written,
                  kwok_labels=args.kwok_labels)
    setup = time.perf_counter() - began
    controller = drain.controller
    passes, rounds, estimates, admitted = [], [], [], 0
    profile = cProfile.Profile() if args.profile else None
    for step in range(args.steps):
        if profile:
            profile.enable()
        ms, plan = drain.step(args.free)
        passes.append(ms)
        admitted += len(plan.admissions)
        if step % args.estimate_every == 0:
            controller._estimated_at = None  # this round estimates
            ms, _ = timed(controller.write_positions)
            estimates.append(ms)
        else:
            ms, _ = timed(controller.write_positions)
            rounds.append(ms)
        if profile:
            profile.disable()
    queued = sum(1 for e in controller.all_entries().values() if e.queued is not None)
    out = {
        "command": "python -m bench.scheduling_pass " + " ".join(args.argv),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
        "load": load_average(),
        "jobs": args.jobs, "nodes": len(drain.nodes), "free_per_pass": args.free, "steps": args.steps,
        "positions_written": args.positions_written, "kwok_labels": args.kwok_labels,
        "queued_at_end": queued, "running_at_end": len(drain.running), "admitted": admitted,
        "position_writes": controller.positions.kube.position_writes,
        "estimate_writes": controller.positions.kube.estimate_writes, "setup_seconds": round(setup, 1),
        "pass": summary(passes),
        "position_round": summary(rounds) if rounds else None,
        "position_round_with_estimate": summary(estimates) if estimates else None,
    }
    if profile:
        out["profile"] = profile_text(profile, args.profile_lines)
    return out


def profile_text(profile: cProfile.Profile, lines: int) -> str:
    """The profile's top `lines` functions by cumulative time."""
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(lines)
    return text.getvalue()


def load_average() -> str:
    """/proc/loadavg's 1, 5 and 15 minute load: each figure goes with the load it was taken at."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--free", type=int, default=3, help="running jobs that end before each pass")
    parser.add_argument("--steps", type=int, default=100, help="passes timed")
    parser.add_argument("--estimate-every", type=int, default=25,
                        help="a position round with an estimate every N steps")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--positions-written", action="store_true",
                        help="start with every waiting job showing its position (few position writes due), "
                             "not with none (every job due, as after a mass submission)")
    parser.add_argument("--kwok-labels", action="store_true",
                        help="label the nodes as the test ground's kwok nodes (hostname, os, arch, type)")
    parser.add_argument("--limits", default="", help='LORA_NAMESPACE_NODE_LIMITS, e.g. {"*": 90}')
    parser.add_argument("--profile", action="store_true", help="cProfile the timed steps (cumulative top list)")
    parser.add_argument("--profile-lines", type=int, default=40)
    parser.add_argument("--out", help="write the result JSON here too")
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    report(run(args), args.out)


def report(result: dict[str, Any], out: str | None) -> None:
    """Prints the result's JSON, then its profile if any; writes the JSON to `out` too if given."""
    profile = result.pop("profile", None)
    text = json.dumps(result, indent=2)
    print(text)
    if profile:
        print(profile)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

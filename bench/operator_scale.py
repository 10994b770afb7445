"""The operator at scale on the real local control plane: N kwok GPU nodes, J jobs, M namespaces.

    PYTHONPATH=tests .venv/bin/python bench/operator_scale.py --nodes 100 --jobs 1000

What it does:
1. `Ground.up()` (etcd, kube-apiserver, controller-manager, scheduler, kwok, MinIO), mixed GPU
   pools (h100x8, a100x8, l40sx4, a10x1), each node cordoned (spec.unschedulable) so nothing
   starts before the queue is full; CRDs, the storage Secret per namespace, the
   dataset object in MinIO; the operator as a real process (`lora-operator run --standalone`).
2. Submits the jobs (seeded: namespace, priority, optional GPU type, duration) and waits
   until every one is Queued; then uncordons the nodes (t0).
3. A fake kubelet in this process ends each trainer pod `duration` seconds after the pod
   appeared; the operator sees the pod Succeeded, finishes the job and admits the next one.
4. Reports, from the API server's watch streams (not the operator's memory): makespan against
   the ideal (total work / nodes) and a zero-latency list-scheduling reference, admission
   latency (node freed -> next trainer pod ADDED) p50/p99, queue-order violations,
   double-booked nodes, API requests by verb (apiserver_request_total, all clients), and the
   operator's peak RSS (VmHWM) and CPU seconds (utime+stime).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scale_analysis import JobInfo
from scale_audit import read_audit
from scale_probes import (
    HISTOGRAMS,
    apiserver_profile,
    apiserver_requests,
    cpu_by_component,
    histogram_summary,
    histograms,
    proc_usage,
    python_pid,
    sample_lag,
    sample_rss,
)
from scale_report import report
from scale_watch import FakeKubelet, Recorder

from testground import Ground, gpu_node
from testground.operator import OperatorProcess, install_crds, storage_secret

POOLS = (("h100", 8, 0.4), ("a100", 8, 0.3), ("l40s", 4, 0.2), ("a10", 1, 0.1))
"""GPU type, GPUs per node, share of the nodes."""
PRIORITIES = ((0, 0.6), (1, 0.2), (5, 0.15), (10, 0.05))
CONSTRAINED_SHARE = 0.3
"""Share of jobs that name a GPU type (drawn by pool size); the rest run anywhere."""
NODES_PER_APPLY = 200
"""Nodes per kubectl apply: 1000 in one apply ran past kubectl's 60 s on a loaded machine."""
GROUP, VERSION, PLURAL = "lora-operator.io", "v1alpha1", "loratrainingjobs"


def pools(nodes: int) -> list[tuple[str, int, int]]:
    counts = [max(1, round(nodes * share)) for _, _, share in POOLS]
    counts[0] += nodes - sum(counts)
    return [(t, g, c) for (t, g, _), c in zip(POOLS, counts, strict=True)]


def draw_jobs(count: int, namespaces: int, seed: int, mean: float) -> list[dict]:
    """Seeded jobs: namespace, priority, optional GPU type, duration (gamma, shape 4: cv 0.5)."""
    rng = random.Random(seed)
    types = [t for t, _, _ in POOLS]
    weights = [s for _, _, s in POOLS]
    jobs = []
    for i in range(count):
        jobs.append({
            "name": f"job-{i:05d}", "namespace": f"team-{rng.randrange(namespaces):02d}", "order": i,
            "priority": rng.choices([p for p, _ in PRIORITIES], [w for _, w in PRIORITIES])[0],
            "gpuType": rng.choices(types, weights)[0] if rng.random() < CONSTRAINED_SHARE else None,
            "duration": max(0.5, rng.gammavariate(4.0, mean / 4.0)),
        })
    return jobs


def manifest(job: dict) -> dict:
    placement = {"gpuType": job["gpuType"]} if job["gpuType"] else {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "LoraTrainingJob",
        "metadata": {"name": job["name"], "namespace": job["namespace"]},
        "spec": {
            "baseModel": {"family": "sd15", "uri": "s3://models/tiny-sd15"},
            "dataset": {"uri": "s3://datasets/scale/"},
            "output": {"uri": "s3://loras/"},
            "placement": placement,
            "priority": job["priority"],
        },
    }


def hold(node: dict) -> dict:
    """A node manifest cordoned until `release`. A cordon, not a taint of the bench's own: a waiting
    job still matches a cordoned node (it is only not free), while under a taint no job tolerates
    every job was told NoMatchingNode (a status write and a Warning Event each) and then told
    again that a node matches, writes a real cluster does not make per job (issue 17)."""
    node["spec"]["unschedulable"] = True
    return node


def setup(ground: Ground, args, jobs: list[dict]) -> dict[str, str]:
    """Nodes (cordoned: see `hold`), CRDs, namespaces, Secrets, buckets. Returns node -> GPU type."""
    node_type: dict[str, str] = {}
    manifests = []
    for gpu_type, gpus, count in pools(args.nodes):
        for i in range(count):
            name = f"{gpu_type}-{i}"
            manifests.append(hold(gpu_node(name, gpus, gpu_type)))
            node_type[name] = gpu_type
    for start in range(0, len(manifests), NODES_PER_APPLY):
        ground.apply(manifests[start:start + NODES_PER_APPLY])
    ready = 180 + args.nodes // 2  # kwok readies about 4 nodes a second on 2 cores: 1000 took over 180 s
    ground.kubectl("wait", "--for=condition=Ready", f"--timeout={ready}s", "node", "--all", timeout=ready + 20)
    install_crds(ground)
    namespaces = sorted({j["namespace"] for j in jobs})
    ground.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in namespaces])
    ground.apply([storage_secret(ground, ns) for ns in namespaces])
    minio = ground.minio.client()
    for bucket in ("datasets", "loras", "models"):
        if not minio.bucket_exists(bucket):
            minio.make_bucket(bucket)
    import io

    minio.put_object("datasets", "scale/img0.txt", io.BytesIO(b"a corgi"), 7)
    return node_type


def submit(api, jobs: list[dict], threads: int = 8) -> dict[str, dict]:
    """Creates the jobs (in index order, 8 at a time); returns uid -> job.

    Each job's "order" becomes its rank by (creationTimestamp, name), the operator's FIFO key:
    with 8 requests in flight a job can be created a second after later-indexed ones (its
    request waited for a connection), and then it really is the younger one.
    """
    from kubernetes import client

    custom = client.CustomObjectsApi(api)

    def create(job):
        body = custom.create_namespaced_custom_object(GROUP, VERSION, job["namespace"], PLURAL, manifest(job))
        return body["metadata"]["uid"], body["metadata"]["creationTimestamp"], job

    with ThreadPoolExecutor(threads) as pool:
        created = list(pool.map(create, jobs))
    for rank, (_, _, job) in enumerate(sorted(created, key=lambda c: (c[1], c[2]["name"]))):
        job["order"] = rank
    return {uid: job for uid, _, job in created}


def release(api, node_type: dict[str, str]) -> dict[str, float]:
    """Uncordons every node at once; returns node -> time it was released. The same patch takes off
    the taint the node controller put on while the node was cordoned (kubectl uncordon leaves that
    to the controller: a round later)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    released: dict[str, float] = {}

    def uncordon(name):
        core.patch_node(name, {"spec": {"unschedulable": False, "taints": None}})
        released[name] = time.monotonic()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(uncordon, sorted(node_type)))
    return released


def renice(pid: int, nice: int) -> int:
    """Set `nice` on every thread of process `pid` (Linux's nice is per thread; threads made later inherit it from
    the thread that makes them). Returns how many threads were set."""
    tasks = list(Path(f"/proc/{pid}/task").iterdir())
    for task in tasks:
        os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
    return len(tasks)


def ground_up(workdir: Path, args) -> Ground:
    """The test ground, audited with `--audit`, kwok at `--kwok-nice`: kwok plays the kubelets of every fake node,
    work that in a cluster runs on the nodes themselves, not on the cores of the API server and the operator, which
    this 2-core machine shares with it."""
    ground = Ground.up(workdir, audit=args.audit)
    if args.kwok_nice:
        renice(ground.control_plane.procs["kwok"].pid, args.kwok_nice)
    return ground


def run(args) -> dict:
    jobs = draw_jobs(args.jobs, args.namespaces, args.seed, args.duration_mean)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lora-scale-"))
    ground = ground_up(workdir, args)
    operator = None
    recorder = None
    try:
        node_type = setup(ground, args, jobs)
        api = ground.api_client()
        api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
        env = {"LORA_PROGRESS_INTERVAL": str(args.progress_interval), "LORA_UNSCHEDULABLE_TIMEOUT": "300"}
        if args.tracemalloc:
            env["LORA_TRACEMALLOC"] = str(Path(args.tracemalloc).resolve())
        args_op = ("--standalone",)
        operator = OperatorProcess(ground, workdir / "operator.log", extra_env=env, args=args_op)
        if args.profile:
            operator = _profiled(operator, workdir, args.profile, gil=args.profile_gil)
        operator.start()
        kubelet = FakeKubelet(api, durations={})
        recorder = Recorder(api, kubelet).start()
        pid = python_pid(operator.proc.pid)
        rss_samples: list = []
        threading.Thread(target=sample_rss, args=(lambda: pid, rss_samples, recorder.stop), daemon=True).start()
        lag_samples: list = []
        threading.Thread(target=sample_lag, args=(lag_samples, recorder.stop), daemon=True).start()
        t_start = time.monotonic()
        before = apiserver_requests(ground)
        t_submit = time.monotonic()
        by_uid = submit(api, jobs)
        t_submitted = time.monotonic()
        kubelet.durations.update({uid: job["duration"] for uid, job in by_uid.items()})

        def progress():
            print(f"  queued {recorder.count('Queued')}/{len(jobs)}, succeeded {recorder.count('Succeeded')}, "
                  f"operator {proc_usage(pid)}", flush=True)

        if not recorder.wait_phase("Queued", len(jobs), args.timeout, progress):
            raise SystemExit(f"only {recorder.count('Queued')} jobs Queued\n{operator.tail()}")
        t_queued = time.monotonic()
        usage_queued = proc_usage(pid)
        mid = apiserver_requests(ground)
        wall_mid = time.time()
        print(f"all {len(jobs)} Queued {t_queued - t_submit:.1f}s after the first submission", flush=True)
        if args.tracemalloc:  # start tracing now (not through the start-up imports), then a baseline dump
            os.kill(pid, signal.SIGUSR1)
            time.sleep(3.0)
            os.kill(pid, signal.SIGUSR1)
            time.sleep(3.0)
        cpu_t0, histograms_t0 = cpu_by_component(ground, pid), histograms(operator.metrics())
        t0 = time.monotonic()
        released = release(api, node_type)
        apiserver_profile(ground, args.apiserver_profile, delay=3.0, seconds=30)
        if not recorder.wait_phase("Succeeded", len(jobs), args.timeout, progress):
            raise SystemExit(f"only {recorder.count('Succeeded')} jobs Succeeded\n{operator.tail()}")
        t_done = time.monotonic()
        usage = proc_usage(pid)
        cpu_done = cpu_by_component(ground, pid)
        histograms_done = histograms(operator.metrics())
        summaries = {key: histogram_summary(name, histograms_t0, histograms_done) for key, name in HISTOGRAMS.items()}
        if args.tracemalloc:
            os.kill(pid, signal.SIGUSR1)
            time.sleep(5.0)
        after = apiserver_requests(ground)
        wall_after = time.time()
        time.sleep(1.0)  # the last pod deletions arrive on the watch (and the audit log's last batch)
        by_client = (read_audit(ground.control_plane.audit_log, wall_mid, wall_after)
                     if args.audit else None)
        info = {uid: JobInfo(uid, j["namespace"], j["name"], j["priority"], j["order"], j["gpuType"], j["duration"])
                for uid, j in by_uid.items()}
        return report(args, pools(args.nodes), jobs, info, node_type, recorder, kubelet, released, before, mid, after,
                      times={"submit": t_submit, "submitted": t_submitted, "queued": t_queued, "t0": t0,
                             "done": t_done},
                      usage_queued=usage_queued, usage=usage, operator=operator,
                      summaries=summaries, by_client=by_client,
                      cpu={k: round(cpu_done[k] - cpu_t0.get(k, 0.0), 1) for k in cpu_done},
                      lag=[ms for t, ms in list(lag_samples) if t0 <= t <= t_done],
                      rss=[(round(t - (t0 - t_start), 1), mb) for t, mb in rss_samples])
    finally:
        if recorder:
            recorder.close()
        if operator:
            if args.profile and operator.proc and operator.proc.popen:
                # SIGINT to the operator alone: kopf exits, then py-spy writes its profile.
                with contextlib.suppress(OSError, IndexError, subprocess.TimeoutExpired):
                    os.kill(python_pid(operator.proc.pid), signal.SIGINT)
                    operator.proc.popen.wait(timeout=90)
            operator.stop()
        if not args.keep:
            ground.down()
        else:
            print(f"ground kept in {workdir} (KUBECONFIG={ground.kubeconfig})")


def _profiled(operator: OperatorProcess, workdir: Path, tool: str, gil: bool = False) -> OperatorProcess:
    """The operator started under py-spy (all threads; `gil`: only the one holding the GIL) instead of plain python."""
    from testground.procs import Proc

    def start():
        out = workdir / f"operator-profile.{ {'flamegraph': 'svg', 'speedscope': 'json', 'raw': 'txt'}[tool]}"
        argv = [str(Path(sys.executable).parent / "py-spy"), "record", "--threads", "-r", "50",
                *(["--gil"] if gil else []), "-f", tool, "-o", str(out),
                "--", sys.executable, "-m", "lora_operator.cli", "run", *operator.args]
        operator.proc = Proc("lora-operator", argv, operator.log, env=operator.env()).start()
        return operator

    operator.start = start  # type: ignore[method-assign]
    return operator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration-mean", type=float, default=5.0, help="mean trainer pod duration, seconds")
    parser.add_argument("--progress-interval", type=float, default=10.0,
                        help="LORA_PROGRESS_INTERVAL of the operator (its production default)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--kwok-nice", type=int, default=0, metavar="N",
                        help="run kwok (the fake nodes' kubelets) at this nice level, below the control plane's")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="leave the test ground running")
    parser.add_argument("--profile", choices=("flamegraph", "speedscope", "raw"), default=None,
                        help="run the operator under py-spy (pip install py-spy into the venv first)")
    parser.add_argument("--profile-gil", action="store_true",
                        help="with --profile: sample only the thread holding the GIL (py-spy --gil). Without it a "
                             "thread blocked in a TLS read or waiting for the GIL counts as busy: the profile is "
                             "wall time by thread, not the operator's CPU")
    parser.add_argument("--tracemalloc", default=None, metavar="DIR",
                        help="trace the operator's allocations from all-Queued on (LORA_TRACEMALLOC): dumps to DIR")
    parser.add_argument("--apiserver-profile", default=None, metavar="FILE",
                        help="save a 30 s Go CPU profile of the API server, from 3 s after the release")
    parser.add_argument("--audit", action="store_true",
                        help="audit-log every API request and report the drain's requests by client "
                             "(api_requests_drain_phase_by_client; costs the API server some CPU)")
    parser.add_argument("--out", default=None, help="write the result JSON here")
    parser.add_argument("--trace", default=None, metavar="FILE",
                        help="write each pod's end (fake kubelet), watch events and start, in time.monotonic() seconds")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

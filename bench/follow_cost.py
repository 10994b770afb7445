"""CPU of the follow loop per followed job, in process against a real MinIO (no API server), and
how the loop's reconciles spread over the progress interval.

    PYTHONPATH=tests:bench python -m bench.follow_cost --jobs 200 [--interval 10] [--intervals 3]
        [--reports written|none] [--profile]

A real `Controller` over N running jobs (each with its running trainer pod in the pods index) and
a real MinIO from the test ground. `--reports written`: each job's prefix holds a manifest.json
(two checkpoints, a preview, a model fetch) and a progress.json that a separate process rewrites
every `--trainer-interval` seconds with the next step, as training trainers do; `none`: nothing
(the scale bench's kwok pods). The status writes go to a fake API server that applies them to the
job bodies as the watch would show them (`BenchKube`), so no API call is timed.

Three figures:
- `direct`: the lifecycle's part of one follow reconcile (`Lifecycle.reconcile` + `sync_progress`),
  called in this thread: CPU ms per job (`time.thread_time`); `--profile` profiles it.
- `loop`: the controller's follow loop run for `--intervals` progress intervals of `--interval`
  seconds: the whole process's CPU (`time.process_time`: event loop, threads, minio SDK) per
  reconcile; the reconciles per interval; how they spread over the interval (the most that
  started in any tenth of it, against N/10 when even) and the most in flight at once.
- `event_reconcile_ms`: meanwhile, an event-driven reconcile (`reconcile_workers`' path) of a
  queued job every 0.2 s: its wall time, p50 / p99 (what a Succeeded write waits behind).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import cProfile
import io
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.scheduling_pass import load_average, profile_text, report
from lora_operator import status_transitions as st
from lora_operator.api import JobStatus, resolve_spec
from lora_operator.api.contract import MANIFEST_KEY, PROGRESS_KEY
from lora_operator.api.reports import CheckpointEntry, Manifest, ModelFetch, PreviewEntry, ProgressReport
from lora_operator.config import OperatorConfig
from lora_operator.controller import Controller
from lora_operator.metrics import OperatorMetrics
from lora_operator.own_writes import OwnWrites
from lora_operator.scheduling import GpuNode
from lora_operator.storage.s3 import S3Store
from lora_operator.views import JOB_UID_LABEL, slim_job, slim_pod, utcnow

BUCKET = "loras"
NAMESPACE = "team-00"
SECRET = "lora-storage"
START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def counting_gets() -> collections.Counter[str]:
    """Counts the operator's object reads by file name (progress.json, manifest.json) from now on."""
    counts: collections.Counter[str] = collections.Counter()
    get_bytes = S3Store.get_bytes

    def counted(self, key: str) -> bytes | None:
        counts[key.rsplit("/", 1)[-1]] += 1
        return get_bytes(self, key)

    S3Store.get_bytes = counted  # type: ignore[method-assign]
    return counts


class BenchKube:
    """The API server as the follow loop sees it: the job's Secret, and status patches applied to
    the job bodies with a new resourceVersion, as the watch would show them."""

    def __init__(self, access_key: str, secret_key: str) -> None:
        self.own_writes = OwnWrites()
        self.secret = {"accessKey": base64.b64encode(access_key.encode()).decode(),
                       "secretKey": base64.b64encode(secret_key.encode()).decode()}
        self.jobs: dict[str, dict] = {}
        self.by_name: dict[str, str] = {}
        self.patches = 0
        self.rv = 1000

    def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        return dict(self.secret) if name == SECRET else None

    def patch_job_status(self, namespace: str, name: str, patch: dict, resource_version: str | None = None):
        uid = self.by_name[name]
        body = self.jobs[uid]
        status = dict(body.get("status") or {})
        for key, value in patch.items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        self.rv += 1
        self.jobs[uid] = slim_job({**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)},
                                   "status": status})
        self.patches += 1

    def delete_pod(self, namespace: str, name: str) -> None:
        raise AssertionError(f"a running job's pod {name} was deleted")


def job_body(i: int, phase: str = "Running") -> tuple[str, dict, dict | None]:
    """(uid, slim body, slim pod) of job i, running on node-i (or queued, without a pod)."""
    uid = f"00000000-0000-0000-0000-{i:012d}"
    name = f"job-{i:05d}"
    spec = resolve_spec({"baseModel": {"family": "sd15", "uri": "s3://models/tiny-sd15"},
                         "dataset": {"uri": "s3://datasets/scale/"}, "output": {"uri": f"s3://{BUCKET}/"}})
    status = st.queued(JobStatus(), position=None, now=START)
    pod = None
    if phase == "Running":
        pod_name = f"{name}-a1"
        status = st.pod_running(st.admitted(status, node=f"node-{i}", gpus=8, pod=pod_name, attempt=1, now=START),
                                now=START)
        pod = slim_pod({"metadata": {"name": pod_name, "namespace": NAMESPACE, "labels": {JOB_UID_LABEL: uid},
                                     "resourceVersion": "1"},
                        "spec": {"nodeName": f"node-{i}"}, "status": {"phase": "Running"}})
    resource = status.to_resource()
    resource["resolvedSpec"] = spec.to_resource()
    body = {"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": uid, "generation": 1, "resourceVersion": "1",
                         "creationTimestamp": START.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "spec": {}, "status": resource}
    return uid, slim_job(body), pod


def prefix_of(uid: str, i: int) -> str:
    return f"{NAMESPACE}/job-{i:05d}/{uid}/"


def manifest_of(uid: str) -> bytes:
    checkpoints = [CheckpointEntry(name=f"epoch-{e:04d}", epoch=e, step=100 * e, format="kohya",
                                   path=f"checkpoints/epoch-{e:04d}/kohya.safetensors", size_bytes=3_000_000,
                                   sha256="b" * 64, validation_loss=0.1) for e in (1, 2)]
    previews = [PreviewEntry(epoch=2, prompt="a corgi", paths=["previews/epoch-0002/p0-i0.png"],
                             grid="previews/epoch-0002/grid.png")]
    models = [ModelFetch(uri="s3://models/tiny-sd15", key="k" * 16, hit=True)]
    return Manifest(job_uid=uid, images=40, total_steps=1000, checkpoints=checkpoints, previews=previews,
                    node_name="node-0", models=models).model_dump_json(by_alias=True, indent=1).encode()


def progress_of(uid: str, step: int) -> bytes:
    fields = {"job_uid": uid, "attempt": 1, "step": step, "total_steps": 1000, "epoch": 2, "total_epochs": 10,
              "loss": 0.1, "steps_per_second": 1.5, "eta_seconds": 600.0, "updated_at": utcnow().isoformat()}
    if "manifest_writes" in ProgressReport.model_fields:  # a trainer that counts its manifest writes
        fields["manifest_writes"] = 3
    return ProgressReport(**fields).model_dump_json(by_alias=True, indent=1).encode()


def minio_client(endpoint: str, access_key: str, secret_key: str):
    from minio import Minio

    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=False)


def put(client, key: str, data: bytes) -> None:
    client.put_object(BUCKET, key, io.BytesIO(data), len(data), content_type="application/json")


def trainers(endpoint: str, access_key: str, secret_key: str, jobs: list[tuple[str, int]], every: float) -> None:
    """A separate process (its CPU is not the operator's): every job's progress.json rewritten
    every `every` seconds with the next step, until terminated."""
    client = minio_client(endpoint, access_key, secret_key)
    step = 100
    while True:
        began = time.monotonic()
        step += 1
        for uid, i in jobs:
            put(client, prefix_of(uid, i) + PROGRESS_KEY, progress_of(uid, step))
        time.sleep(max(0.0, every - (time.monotonic() - began)))


def build(args: argparse.Namespace, endpoint: str, access_key: str, secret_key: str):
    kube = BenchKube(access_key, secret_key)
    config = OperatorConfig(storage_endpoint=endpoint, progress_interval=args.interval)
    controller = Controller(kube, config, OperatorMetrics(), lambda *a: None)  # type: ignore[arg-type]
    pods: dict[str, list[dict]] = {}
    for i in range(args.jobs + 1):  # the last one queued: the event reconciles' probe
        uid, body, pod = job_body(i, "Running" if i < args.jobs else "Queued")
        kube.jobs[uid], kube.by_name[body["metadata"]["name"]] = body, uid
        if pod:
            pods[uid] = [pod]
    controller.bind(kube.jobs, pods, {f"node-{i}": [GpuNode(f"node-{i}", True, True, 8, {})] for i in range(args.jobs)})
    client = minio_client(endpoint, access_key, secret_key)
    if not client.bucket_exists(BUCKET):
        client.make_bucket(BUCKET)
    running = [(uid, i) for i, uid in enumerate(list(kube.jobs)[:args.jobs])]
    if args.reports == "written":
        for uid, i in running:
            put(client, prefix_of(uid, i) + MANIFEST_KEY, manifest_of(uid))
            put(client, prefix_of(uid, i) + PROGRESS_KEY, progress_of(uid, 100))
    return kube, controller, running, list(kube.jobs)[-1]


def direct(controller: Controller, uids: list[str], profile: cProfile.Profile | None) -> float:
    """CPU ms per job of the lifecycle's part of a follow reconcile, in this thread."""
    began = time.thread_time()
    if profile:
        profile.enable()
    for uid in uids:
        view = controller.job(uid)
        controller.lifecycle.reconcile(view, controller.index.pods_of(uid), utcnow())
        controller.lifecycle.sync_progress(controller.job(uid) or view, utcnow())
    if profile:
        profile.disable()
    return (time.thread_time() - began) * 1000 / len(uids)


async def loop(controller: Controller, args: argparse.Namespace, probe: str) -> dict[str, Any]:
    """The follow loop for `args.intervals` intervals, with event reconciles of `probe` meanwhile."""
    starts: list[float] = []
    inflight = [0, 0]  # now, most
    reconcile = controller.reconcile

    async def counted(uid: str, **kw: Any) -> None:
        if kw.get("progress"):
            starts.append(time.monotonic())
            inflight[0] += 1
            inflight[1] = max(inflight)
        try:
            await reconcile(uid, **kw)
        finally:
            if kw.get("progress"):
                inflight[0] -= 1

    controller.reconcile = counted  # type: ignore[method-assign]
    events: list[float] = []

    async def probing() -> None:
        while True:
            began = time.perf_counter()
            await reconcile(probe)
            events.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.2)

    follower = asyncio.create_task(controller.follow_loop())
    prober = asyncio.create_task(probing())
    await asyncio.sleep(args.interval * 1.5)  # the first follows are under way (the old loop's first tick)
    starts.clear()
    events.clear()
    inflight[1] = inflight[0]
    gets = counting_gets()
    began_cpu, began = time.process_time(), time.monotonic()
    await asyncio.sleep(args.interval * args.intervals)
    cpu, wall = time.process_time() - began_cpu, time.monotonic() - began
    follower.cancel()
    prober.cancel()
    count = len(starts)
    tenth = args.interval / 10
    bins: dict[int, int] = {}
    for t in starts:
        bins[int((t - began) / tenth)] = bins.get(int((t - began) / tenth), 0) + 1
    in_window = [bins.get(b, 0) for b in range(args.intervals * 10)]
    ordered = sorted(events)
    return {
        "reconciles": count,
        "reads_per_reconcile": {key: round(n / max(1, count), 2) for key, n in sorted(gets.items())},
        "reconciles_per_interval": round(count / args.intervals, 1),
        "cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2),
        "cpu_ms_per_reconcile": round(1000 * cpu / max(1, count), 2),
        "cpu_ms_per_job_per_interval": round(1000 * cpu / args.jobs / args.intervals, 2),
        "cores": round(cpu / wall, 2),
        "most_started_in_a_tenth_of_the_interval": max(in_window),
        "even_share_per_tenth": round(count / len(in_window), 1),
        "tenths_with_none": sum(1 for n in in_window if n == 0),
        "most_in_flight": inflight[1],
        "event_reconcile_ms": {"n": len(ordered), "p50": round(statistics.median(ordered), 1),
                               "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 1),
                               "max": round(ordered[-1], 1)} if ordered else None,
    }


def run(args: argparse.Namespace, endpoint: str, access_key: str, secret_key: str) -> dict[str, Any]:
    kube, controller, running, probe = build(args, endpoint, access_key, secret_key)
    writer = None
    if args.reports == "written":
        writer = multiprocessing.get_context("spawn").Process(
            target=trainers, args=(endpoint, access_key, secret_key, running, args.trainer_interval), daemon=True)
        writer.start()
    try:
        uids = [uid for uid, _ in running]
        direct(controller, uids, None)  # warm: clients, Secrets, parsed views
        profile = cProfile.Profile() if args.profile else None
        rounds = [direct(controller, uids, profile) for _ in range(args.direct_rounds)]
        patches = kube.patches
        looped = asyncio.run(loop(controller, args, probe))
    finally:
        if writer:
            writer.terminate()
            writer.join()
    out = {
        "command": "python -m bench.follow_cost " + " ".join(args.argv),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
        "load": load_average(), "jobs": args.jobs, "interval": args.interval, "reports": args.reports,
        "direct_cpu_ms_per_job": [round(ms, 2) for ms in rounds],
        "direct_status_patches": patches, "loop": looped, "status_patches": kube.patches,
    }
    if profile:
        out["profile"] = profile_text(profile, args.profile_lines)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="running jobs followed")
    parser.add_argument("--interval", type=float, default=10.0, help="the follow loop's progress interval, seconds")
    parser.add_argument("--intervals", type=int, default=3, help="intervals the loop is measured over")
    parser.add_argument("--reports", choices=("written", "none"), default="written")
    parser.add_argument("--trainer-interval", type=float, default=1.0,
                        help="seconds between the fake trainers' progress.json rewrites")
    parser.add_argument("--direct-rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-lines", type=int, default=40)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    from testground import MinioServer, tools_dir

    workdir = Path(tempfile.mkdtemp(prefix="follow-cost-"))
    server = MinioServer(tools_dir() / "minio", workdir / "data", workdir / "minio.log").start()
    try:
        out = run(args, server.endpoint, server.access_key, server.secret_key)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(out, args.out)


if __name__ == "__main__":
    main()


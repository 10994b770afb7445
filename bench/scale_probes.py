"""What the scale benchmark reads from the running processes: the API server's request counters
and CPU profile, the operator's histograms, and the memory and CPU of every process (/proc)."""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from testground import Ground


def apiserver_get(ground: Ground, path: str, timeout: float = 10) -> bytes:
    """GET `path` from the API server as the admin user (metrics, pprof)."""
    pki = ground.control_plane.pki
    ctx = ssl.create_default_context(cafile=str(pki.ca_crt))
    ctx.load_cert_chain(str(pki.admin_crt), str(pki.admin_key))
    with urllib.request.urlopen(f"{ground.control_plane.server}{path}", context=ctx, timeout=timeout) as resp:
        return resp.read()


def apiserver_profile(ground: Ground, out: str | None, delay: float, seconds: int) -> None:
    """Saves a CPU profile of the API server (Go pprof) taken `delay` s from now into `out`, when
    given; `go tool pprof -top <kube-apiserver binary> <out>` reads it."""
    if not out:
        return

    def take():
        time.sleep(delay)
        data = apiserver_get(ground, f"/debug/pprof/profile?seconds={seconds}", timeout=seconds + 30)
        Path(out).write_bytes(data)

    threading.Thread(target=take, daemon=True).start()


def apiserver_requests(ground: Ground) -> Counter:
    """apiserver_request_total summed by (verb, resource/subresource), all clients."""
    text = apiserver_get(ground, "/metrics").decode()
    totals: Counter = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_part, value = line.rsplit(" ", 1)
        labels = dict(item.split("=", 1) for item in labels_part[len("apiserver_request_total{"):-1].split(",")
                      if "=" in item)
        labels = {k: v.strip('"') for k, v in labels.items()}
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        if labels.get("code", "200")[0] != "2":
            resource += f" ({labels['code']})"
        totals[labels.get("verb", ""), resource] += float(value)
    return totals


def proc_usage(pid: int) -> dict:
    """Peak RSS (VmHWM) and CPU seconds (utime+stime) of a live process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = 100.0
    return {"peak_rss_mb": round(hwm / 1024, 1), "rss_mb": round(rss / 1024, 1),
            "cpu_seconds": round((int(fields[11]) + int(fields[12])) / ticks, 1)}


def python_pid(pid: int) -> int:
    """The operator's python process: `pid` itself, or its child when py-spy launched it."""
    if b"py-spy" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        return pid
    deadline = time.monotonic() + 30  # py-spy starts its child a moment after it starts itself
    while not (children := Path(f"/proc/{pid}/task/{pid}/children").read_text().split()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"py-spy (pid {pid}) started no operator process")
        time.sleep(0.05)
    return int(children[0])


def cpu_by_component(ground: Ground, operator_pid: int) -> dict[str, float]:
    """CPU seconds so far of each test-ground process, the operator and this benchmark (utime+stime)."""
    pids = {name: proc.pid for name, proc in ground.control_plane.procs.items() if proc.pid}
    pids.update({"minio": ground.minio.proc.pid if ground.minio.proc else None, "operator": operator_pid,
                 "benchmark": os.getpid()})
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError, TypeError):
            out[name] = proc_usage(pid)["cpu_seconds"]
    return out


HISTOGRAMS = {"passes": "lora_operator_scheduling_pass_seconds",
              "operator_admission_latency": "lora_operator_admission_latency_seconds",
              "event_loop_lag": "lora_operator_event_loop_lag_seconds"}
"""The operator's histograms the report summarizes for the drain: its scheduling passes, and its
own admission latency (from the pod end it saw to its pod-create response; the benchmark's
figure adds the watch deliveries on both sides), and how late its event loop ran (each watch event
waits that long before the operator sees it)."""


def histograms(metrics_text: str) -> dict[str, float]:
    """The samples of the operator's HISTOGRAMS, from its /metrics text."""
    return {key: float(value) for key, value in (line.rsplit(" ", 1) for line in metrics_text.splitlines()
                                                 if line.startswith(tuple(HISTOGRAMS.values())))}


def histogram_summary(name: str, before: dict[str, float], after: dict[str, float]) -> dict:
    """One histogram between two scrapes: count, mean, and how many took longer than each bucket bound."""
    delta = {key: value - before.get(key, 0.0) for key, value in after.items() if key.startswith(name)}
    count = delta.get(f"{name}_count", 0.0)
    buckets = {key.split('le="')[1].split('"')[0]: n for key, n in delta.items() if "_bucket{" in key}
    return {"count": int(count), "mean_ms": round(1000 * delta.get(f"{name}_sum", 0.0) / max(count, 1), 2),
            "slower_than_seconds": {le: int(count - n) for le, n in buckets.items() if le != "+Inf" and count > n}}


def sample_rss(pid_of, samples: list, stop) -> None:
    """(seconds, RSS MB) of the operator every half second, to see when memory grows."""
    start = time.monotonic()
    while not stop.wait(0.5):
        with contextlib.suppress(OSError, IndexError, StopIteration):
            samples.append((round(time.monotonic() - start, 1), proc_usage(pid_of())["rss_mb"]))


def sample_lag(samples: list, stop, interval: float = 0.005) -> None:
    """How late this process's threads wake: a 5 ms sleep's overshoot, in ms, until `stop`.

    The fake kubelet and the pod watch live in this process: their delays count as admission
    latency and makespan, so the report shows how large this process's own share is."""
    while not stop.is_set():
        start = time.monotonic()
        time.sleep(interval)
        samples.append((start, 1000 * (time.monotonic() - start - interval)))

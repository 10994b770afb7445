"""Tools of the fault tests: the API server's pod history (a watch the test records itself, never
the operator's memory), the invariants checked on it, a pod completer playing kwok's kubelet, a
kubelet shim whose trainer processes can be killed with a chosen fate, and small job helpers."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from testground.kubelet_shim import KubeletShim
from testground.operator import kwok_job, storage_secret
from testground.podstatus import TIME, report, terminated

TRAINER_SELECTOR = "app.kubernetes.io/component=trainer"
JOB_UID_LABEL = "lora-operator.io/job-uid"
ATTEMPT_LABEL = "lora-operator.io/attempt"
FINISHED_POD_PHASES = ("Succeeded", "Failed")
PEERING = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "lora-operator"}}
"""The peering object `helm install` creates; without it kopf runs every replica standalone."""


# --------------------------------------------------------------------------- pod history
@dataclass(frozen=True)
class PodState:
    """One observed version of a trainer pod."""

    kind: str
    """ADDED, MODIFIED, DELETED (a relist after a broken watch reports what it finds the same way)."""
    namespace: str
    name: str
    uid: str
    job_uid: str
    attempt: int
    node: str | None
    """spec.nodeName: the node the pod is bound to (and holds)."""
    phase: str
    deleting: bool
    exit_code: int | None
    resource_version: int

    @property
    def active(self) -> bool:
        return self.kind != "DELETED" and self.phase not in FINISHED_POD_PHASES


def pod_state(kind: str, pod) -> PodState:
    """A PodState from a kubernetes-client V1Pod."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    labels = meta.labels or {}
    code = None
    for cs in (status.container_statuses or []) if status else []:
        if cs.state and cs.state.terminated:
            code = cs.state.terminated.exit_code
    return PodState(kind, meta.namespace, meta.name, meta.uid, labels.get(JOB_UID_LABEL, ""),
                    int(labels.get(ATTEMPT_LABEL, "0")), spec.node_name if spec else None,
                    (status.phase if status else None) or "Pending", meta.deletion_timestamp is not None, code,
                    int(meta.resource_version or 0))


class PodHistory:
    """Records every trainer-pod event the API server sends, in order, from a watch of its own.

    A watch broken by an API-server restart is re-established with a fresh list; pods that vanished
    meanwhile are recorded as DELETED, so the replay stays consistent (only the intermediate states
    during the outage itself are not seen).
    """

    def __init__(self, ground, on_event: Callable[[PodState], None] | None = None):
        from kubernetes import client

        self.core = client.CoreV1Api(ground.api_client())
        self.events: list[PodState] = []
        self.relists = 0
        self.on_event = on_event
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._known: dict[str, PodState] = {}
        self._thread = threading.Thread(target=self._run, daemon=True, name="pod-history")

    def start(self) -> PodHistory:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=40)

    def _record(self, state: PodState) -> None:
        with self._lock:
            self.events.append(state)
            if state.kind == "DELETED":
                self._known.pop(state.uid, None)
            else:
                self._known[state.uid] = state
        if self.on_event:
            self.on_event(state)

    def _relist(self) -> str:
        listing = self.core.list_pod_for_all_namespaces(label_selector=TRAINER_SELECTOR, _request_timeout=20)
        seen = set()
        for pod in listing.items:
            seen.add(pod.metadata.uid)
            self._record(pod_state("ADDED" if pod.metadata.uid not in self._known else "MODIFIED", pod))
        for uid, old in list(self._known.items()):
            if uid not in seen:
                self._record(PodState("DELETED", old.namespace, old.name, uid, old.job_uid, old.attempt, old.node,
                                      old.phase, True, old.exit_code, old.resource_version))
        self.relists += 1
        return listing.metadata.resource_version

    def _run(self) -> None:
        from kubernetes import watch

        version = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                stream = watch.Watch()
                for event in stream.stream(self.core.list_pod_for_all_namespaces, label_selector=TRAINER_SELECTOR,
                                           resource_version=version, timeout_seconds=5, _request_timeout=30):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    self._record(pod_state(event["type"], pod))
                    if self._stop.is_set():
                        return
            except Exception:  # noqa: BLE001 - apiserver restarting, 410 Gone: list again
                version = None
                self._stop.wait(0.5)

    def snapshot(self) -> list[PodState]:
        with self._lock:
            return list(self.events)

    def current(self) -> list[PodState]:
        with self._lock:
            return list(self._known.values())


def _overlaps(events: list[PodState], key, what: str) -> list[str]:
    """Replays the pod history; every moment two unfinished pods shared `key(pod)` (None: not counted)."""
    state: dict[str, PodState] = {}
    found = []
    for ev in events:
        if ev.kind == "DELETED":
            state.pop(ev.uid, None)
            continue
        state[ev.uid] = ev
        shared = key(ev)
        if shared is not None and ev.active:
            holders = sorted(s.name for s in state.values() if key(s) == shared and s.active)
            if len(holders) > 1:
                found.append(f"{what} {shared} had {holders} (rv {ev.resource_version})")
    return found


def double_bookings(events: list[PodState]) -> list[str]:
    """Every moment a node held two unfinished trainer pods (bound by spec.nodeName)."""
    return _overlaps(events, lambda pod: pod.node or None, "node")


def double_runs(events: list[PodState]) -> list[str]:
    """Every moment a job had two unfinished trainer pods (bound or not)."""
    return _overlaps(events, lambda pod: pod.job_uid, "job")


def succeeded_pods_by_job(events: list[PodState]) -> dict[str, set[str]]:
    """job uid -> names of its pods that ever reached phase Succeeded."""
    done: dict[str, set[str]] = defaultdict(set)
    for ev in events:
        if ev.phase == "Succeeded":
            done[ev.job_uid].add(ev.name)
    return done


# --------------------------------------------------------------------------- pod completer
class PodCompleter:
    """Ends each Running trainer pod Succeeded after a random short time, as its kubelet would."""

    def __init__(self, ground, seed: int, low: float = 0.2, high: float = 1.5):
        from kubernetes import client

        self.core = client.CoreV1Api(ground.api_client())
        self.rng = random.Random(seed)
        self.low, self.high = low, high
        self.scheduled: set[str] = set()
        self.completed: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, state: PodState) -> None:
        if state.phase != "Running" or not state.node or state.deleting:
            return
        with self._lock:
            if state.uid in self.scheduled:
                return
            self.scheduled.add(state.uid)
            delay = self.rng.uniform(self.low, self.high)
        threading.Timer(delay, self._complete, args=(state,)).start()

    def _complete(self, state: PodState) -> None:
        status = {"status": terminated(0)}
        for _ in range(60):  # the API server may be restarting
            try:
                self.core.patch_namespaced_pod_status(state.name, state.namespace, status, _request_timeout=10)
                with self._lock:
                    self.completed.add(state.uid)
                return
            except Exception as err:  # noqa: BLE001
                if getattr(err, "status", None) == 404:
                    return
                time.sleep(0.5)


# --------------------------------------------------------------------------- jobs
def job(name: str, namespace: str, gpu_type: str, **spec) -> dict:
    """A LoraTrainingJob whose pods kwok runs (nothing trains; the test ends the pods)."""
    retry = {"maxRetries": 3, "backoffSeconds": 1, "maxBackoffSeconds": 2}
    return kwok_job(name, gpu_type, namespace=namespace, **{"retryPolicy": retry, **spec})

def list_jobs(ground, namespace: str | None = None) -> list[dict]:
    where = ["-n", namespace] if namespace else ["-A"]
    return json.loads(ground.kubectl("get", "ltj", *where, "-o", "json", timeout=60).stdout)["items"]


def phases(jobs: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for j in jobs:
        counts[(j.get("status") or {}).get("phase") or "None"] += 1
    return dict(counts)


def condition(job_: dict, type_: str) -> dict | None:
    return next((c for c in (job_.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


# --------------------------------------------------------------------------- kubelet shim with fates
def trainer_pids(namespace: str, job_name: str) -> list[int]:
    """Pids of local trainer processes of one job (found by the environment the shim gave them)."""
    wanted = {f"LORA_JOB_NAME={job_name}".encode(), f"LORA_JOB_NAMESPACE={namespace}".encode()}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if wanted <= env:
            pids.append(int(entry.name))
    return pids


@dataclass
class FateShim(KubeletShim):
    """The kubelet shim, limited to some namespaces, where the test decides how a killed pod ends.

    `kill(ns, pod, fate)` SIGKILLs the trainer process; the pod then ends as the fate says:
    ``oom`` (exit 137, OOMKilled, as the kernel's OOM killer and the kubelet report it),
    ``evicted`` (phase Failed, reason Evicted, DisruptionTarget condition) or ``node-lost``
    (nothing is reported: the node is gone with its kubelet).
    """

    namespaces: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    fates: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            for ns in self.namespaces:
                listing = self.ground.kubectl("get", "pods", "-n", ns, "-l", TRAINER_SELECTOR, "-o", "json",
                                              check=False)
                if listing.returncode:
                    continue
                for pod in json.loads(listing.stdout)["items"]:
                    key = f"{ns}/{pod['metadata']['name']}"
                    if (pod["status"].get("phase") == "Running" and key not in self.started
                            and not pod["metadata"].get("deletionTimestamp")):
                        self.started.add(key)
                        threading.Thread(target=self.run_pod, args=(pod,), daemon=True).start()

    def env_of(self, pod: dict) -> dict[str, str]:
        return {**super().env_of(pod), "LORA_PROGRESS_INTERVAL": "0.3", **self.extra_env}

    def kill(self, namespace: str, pod: str, fate: str) -> None:
        key = f"{namespace}/{pod}"
        self.fates[key] = fate
        proc = self.procs.get(key)
        assert proc is not None, f"no trainer process for {key}"
        os.killpg(proc.pid, signal.SIGKILL)

    def run_pod(self, pod: dict) -> int:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        key = f"{ns}/{name}"
        container = pod["spec"]["containers"][0]
        proc, log = self.launch(pod)
        self.procs[key] = proc
        code = proc.wait()
        self.exits[key] = code
        fate = self.fates.get(key)
        if fate == "node-lost":
            return code
        tail = log.read_text(errors="replace")[-1500:]
        if fate == "evicted":
            status = {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory.",
                      "conditions": [{"type": "DisruptionTarget", "status": "True",
                                      "reason": "TerminationByKubelet", "message": "evicted"}]}
        else:
            code, reason = (137, "OOMKilled") if fate == "oom" else (code, None)
            status = terminated(code, reason, tail, container=container["name"], image=container["image"],
                                started=pod["status"].get("startTime", TIME))
        report(self.ground, ns, name, status, check=False)
        return code



def make_namespace(ground, prefix: str = "chaos") -> str:
    """A new namespace holding the storage Secret trainer pods read."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    ground.kubectl("create", "namespace", name)
    ground.apply(storage_secret(ground, name))
    return name

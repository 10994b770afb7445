"""What the scale benchmark sees from the API server, and the fake kubelet that ends trainer pods.

Everything here reads raw watch streams (one JSON line per event, parsed with `json`, not the
client's model classes, so the benchmark process stays cheap beside the operator on 2 cores).
Every event is recorded with its resourceVersion (the etcd revision: one global order across
pods and jobs) and the time this process received it.
"""

from __future__ import annotations

import heapq
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lora_operator.api.contract import LABEL_JOB_UID as JOB_UID_LABEL
from lora_operator.api.contract import trainer_selector

TRAINER_SELECTOR = trainer_selector()
JOBS_PATH = "/apis/lora-operator.io/v1alpha1/loratrainingjobs"
PODS_PATH = "/api/v1/pods"


def target_node(pod: dict[str, Any]) -> str | None:
    """spec.nodeName, else the node the required node affinity pins (a Pending pod holds it)."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return spec["nodeName"]
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or {}
    for term in affinity.get("nodeSelectorTerms") or ():
        for expr in term.get("matchFields") or ():
            if expr.get("key") == "metadata.name" and expr.get("values"):
                return expr["values"][0]
    return None


@dataclass(frozen=True, slots=True)
class PodEvent:
    t: float
    rv: int
    type: str
    name: str
    namespace: str
    job_uid: str
    node: str | None
    phase: str
    deleting: bool


@dataclass(frozen=True, slots=True)
class JobEvent:
    t: float
    rv: int
    type: str
    uid: str
    namespace: str
    name: str
    phase: str | None
    not_before: str | None


def stream(api, path: str, query: dict[str, str], on_event: Callable[[str, dict], None],
           stop: threading.Event, relists: list | None = None) -> None:
    """Watches `path` from query['resourceVersion'] until `stop`, reconnecting from the last revision.

    A revision the API server no longer has (410 Gone: this process fell behind, the server cut the
    watch, and its window moved on) is recovered by listing the collection again: each object is
    passed on as MODIFIED and the watch goes on from the list. The events in between are lost, so
    each such relist is recorded (time, path) in `relists` for the report.
    """
    pool = api.rest_client.pool_manager
    host = api.configuration.host
    rv = query.get("resourceVersion", "")
    while not stop.is_set():
        params = {**query, "watch": "1", "resourceVersion": rv, "timeoutSeconds": "600",
                  "allowWatchBookmarks": "true"}
        url = host + path + "?" + "&".join(f"{k}={v}" for k, v in params.items() if v != "")
        try:
            resp = pool.request("GET", url, preload_content=False, timeout=None)
        except Exception:  # noqa: BLE001 - the apiserver is going away at the end of a run, or busy
            if stop.wait(0.5):
                return
            continue
        try:
            for event in _events(resp, stop):
                obj = event["object"]
                if event["type"] == "ERROR" and obj.get("code") == 410:
                    rv = relist(api, path, query, on_event)
                    if relists is not None:
                        relists.append((time.monotonic(), path))
                    break
                if event["type"] == "ERROR":
                    raise RuntimeError(f"watch {path}: {obj}")
                rv = obj["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    on_event(event["type"], obj)
        except Exception:  # noqa: BLE001 - a stream cut at shutdown, or a timeout: reconnect
            if stop.is_set():
                return
        finally:
            resp.release_conn()


def _events(resp, stop: threading.Event):
    """The parsed events of a watch response, until it ends or `stop` is set."""
    buffer = b""
    for chunk in resp.stream(65536):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
        if stop.is_set():
            return


def relist(api, path: str, query: dict[str, str], on_event: Callable[[str, dict], None]) -> str:
    """Lists the collection (pages of 500), passes each object on as MODIFIED; returns the list's revision."""
    selector = {k: v for k, v in query.items() if k == "labelSelector"}
    token = ""
    while True:
        params = {**selector, "limit": "500", **({"continue": token} if token else {})}
        url = api.configuration.host + path + "?" + "&".join(f"{k}={v}" for k, v in params.items())
        page = json.loads(api.rest_client.pool_manager.request("GET", url).data)
        for obj in page["items"]:
            on_event("MODIFIED", obj)
        token = page["metadata"].get("continue") or ""
        if not token:
            return page["metadata"]["resourceVersion"]


def list_rv(api, path: str, query: dict[str, str]) -> str:
    """The collection's current resourceVersion (a watch from here misses nothing)."""
    url = api.configuration.host + path + "?limit=1" + "".join(f"&{k}={v}" for k, v in query.items())
    resp = api.rest_client.pool_manager.request("GET", url)
    return json.loads(resp.data)["metadata"]["resourceVersion"]


@dataclass
class FakeKubelet:
    """Ends each trainer pod `duration[job uid]` seconds after it appeared, as its kubelet would.

    The clock of a pod starts when its ADDED event arrives (kube-scheduler's binding and kwok's
    start are part of the job's time, like an image pull), so the node's idle time between two
    pods is the operator's admission latency alone. A pod that is not Running yet when its time
    is up ends as soon as kwok reports it Running.
    """

    api: Any
    durations: dict[str, float]
    workers: int = 4
    added: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    """Failed status updates (each retried 0.2 s later)."""
    _heap: list = field(default_factory=list)
    _running: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)

    def observe(self, event: PodEvent) -> None:
        key = f"{event.namespace}/{event.name}"
        if event.type == "ADDED":
            self.added.setdefault(key, event.t)
        if event.phase == "Running" and key not in self._running and key in self.added:
            self._running.add(key)
            self._end_at(max(self.added[key] + self.durations.get(event.job_uid, 0.0), event.t),
                         event.namespace, event.name)

    def _end_at(self, due: float, namespace: str, name: str) -> None:
        """Schedules the pod's end at `due` (monotonic seconds) and wakes `run`."""
        with self._lock:
            heapq.heappush(self._heap, (due, namespace, name))
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        core = _core(self.api)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="kubelet") as pool:
            while not stop.is_set():
                with self._lock:
                    due = self._heap[0][0] if self._heap else None
                    now = time.monotonic()
                    ready = []
                    while self._heap and self._heap[0][0] <= now:
                        ready.append(heapq.heappop(self._heap))
                for _, ns, name in ready:
                    pool.submit(self._end, core, ns, name)
                self._wake.clear()
                self._wake.wait(timeout=0.5 if due is None else max(0.0, min(0.5, due - time.monotonic())))

    def _end(self, core, namespace: str, name: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}
        status = {"phase": "Succeeded", "containerStatuses": [{
            "name": "trainer", "image": "lora-trainer:bench", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": terminated}}]}
        self.ended[f"{namespace}/{name}"] = time.monotonic()
        try:
            # The response's bytes are read (that frees the connection) but not turned into the
            # client's model objects, which holds the GIL for milliseconds the pod watch would wait out.
            response = core.patch_namespaced_pod_status(name, namespace, {"status": status}, _preload_content=False)
            response.data  # noqa: B018 - reading it returns the connection to the pool
        except Exception as err:  # noqa: BLE001 - a kubelet retries its status update
            self.errors.append(f"{namespace}/{name}: {err!r}"[:300])
            self._end_at(time.monotonic() + 0.2, namespace, name)


def _core(api):
    from kubernetes import client

    return client.CoreV1Api(api)


@dataclass
class Recorder:
    """Watches trainer pods and jobs cluster-wide and keeps a compact event history."""

    api: Any
    kubelet: FakeKubelet
    pods: list[PodEvent] = field(default_factory=list)
    jobs: list[JobEvent] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    job_phase: dict[str, str | None] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)
    relists: list = field(default_factory=list)
    """(monotonic time, path) of each watch that had to list again (events were lost there)."""

    def start(self) -> Recorder:
        pod_query = {"labelSelector": TRAINER_SELECTOR}
        pod_rv = list_rv(self.api, PODS_PATH, pod_query)
        job_rv = list_rv(self.api, JOBS_PATH, {})
        for target, args in (
            (stream, (self.api, PODS_PATH, {**pod_query, "resourceVersion": pod_rv}, self._pod, self.stop,
                      self.relists)),
            (stream, (self.api, JOBS_PATH, {"resourceVersion": job_rv}, self._job, self.stop, self.relists)),
            (self.kubelet.run, (self.stop,)),
        ):
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _pod(self, type_: str, obj: dict) -> None:
        meta = obj["metadata"]
        event = PodEvent(
            t=time.monotonic(), rv=int(meta["resourceVersion"]), type=type_, name=meta["name"],
            namespace=meta["namespace"], job_uid=(meta.get("labels") or {}).get(JOB_UID_LABEL, ""),
            node=target_node(obj), phase=(obj.get("status") or {}).get("phase") or "Pending",
            deleting=bool(meta.get("deletionTimestamp")))
        self.pods.append(event)
        self.kubelet.observe(event)

    def _job(self, type_: str, obj: dict) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        event = JobEvent(t=time.monotonic(), rv=int(meta["resourceVersion"]), type=type_, uid=meta["uid"],
                         namespace=meta["namespace"], name=meta["name"], phase=status.get("phase"),
                         not_before=status.get("notBefore"))
        self.jobs.append(event)
        with self.changed:
            self.job_phase[event.uid] = None if type_ == "DELETED" else event.phase
            self.changed.notify_all()

    def count(self, phase: str) -> int:
        return sum(1 for p in list(self.job_phase.values()) if p == phase)

    def wait_phase(self, phase: str, count: int, timeout: float, progress: Callable[[], None] | None = None) -> bool:
        """Waits until `count` jobs are in `phase` (as the watch shows them)."""
        deadline = time.monotonic() + timeout
        last = 0.0
        with self.changed:
            while self.count(phase) < count:
                if time.monotonic() > deadline:
                    return False
                self.changed.wait(timeout=1.0)
                if progress and time.monotonic() - last > 10:
                    last = time.monotonic()
                    progress()
        return True

    def close(self) -> None:
        self.stop.set()

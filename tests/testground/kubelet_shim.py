"""A kubelet stand-in for trainer pods: runs the pod's real command and environment as a local
process (no container runtime runs here), then reports the exit back as the pod's status.

On kwok's nodes kwok "starts" the pod and this shim does what a kubelet would do with its
container. On the shim's own nodes (`shim_node`, not managed by kwok) the shim is the whole
kubelet: it keeps the node's Lease renewed, marks a bound pod Running, and ends a deleted pod as
a kubelet does: SIGTERM to the process, up to the pod's grace period to exit, then SIGKILL, the
exit reported, and only then the pod removed (until then it holds its node, as on a real node).
On kwok's nodes kwok removes a deleted pod at once; the shim still SIGTERMs its process.
Secret references in the environment are resolved from the real Secret, spec.nodeName from the
pod; paths that exist only inside the image (/cache) are mapped to a local folder, one per node
for a hostPath cache.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .controlplane import KWOK_NODE_ANNOTATION
from .ground import Ground
from .nodes import gpu_node
from .podstatus import TIME, report, terminated

TRAINER_SELECTOR = "app.kubernetes.io/component=trainer"
DEFAULT_GRACE_SECONDS = 30
"""A pod's terminationGracePeriodSeconds when its spec leaves it out (the API's default)."""
LEASE_SECONDS = 40
"""The shim's nodes' Lease duration; renewed every quarter of it, as a kubelet does."""


def shim_node(name: str, labels: dict[str, str] | None = None, gpus: int = 8) -> dict:
    """A GPU node whose kubelet is a `KubeletShim` (`nodes=`): kwok's manifest without kwok's annotation."""
    node = gpu_node(name, gpus, labels={"type": "shim", **(labels or {})})
    node["metadata"]["annotations"].pop(KWOK_NODE_ANNOTATION)
    return node


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Termination:
    """How the shim ended a deleted pod's process, as a kubelet would."""

    grace_seconds: int
    """The grace period it waited after SIGTERM."""
    killed: bool = False
    """SIGKILL was needed: the process outlived its grace period."""
    exit_code: int | None = None
    seconds: float | None = None
    """From SIGTERM to the process's exit."""


@dataclass
class KubeletShim:
    """Watches trainer pods on the ground and runs each Running one once, as a local process."""

    ground: Ground
    workdir: Path
    namespaces: frozenset[str] | None = None
    """Run only the pods of these namespaces (None: every namespace). Kwok keeps other tests' trainer
    pods Running on the shared ground; a test that counts exits must not run those."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """Added to every trainer's environment (e.g. LORA_PROGRESS_INTERVAL)."""
    nodes: frozenset[str] | None = None
    """Nodes (made with `shim_node`) whose kubelet this shim is: it starts their bound pods itself and
    runs only those (None: it runs the pods kwok marks Running on kwok's nodes)."""
    started: set[str] = field(default_factory=set)
    exits: dict[str, int] = field(default_factory=dict)
    terminations: dict[str, Termination] = field(default_factory=dict)
    """namespace/pod -> how a deleted pod's process was ended."""
    _running: dict[str, tuple[subprocess.Popen, dict]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> KubeletShim:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.nodes:
            self._register_nodes()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops watching; processes still running are ended as if their pods were deleted."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        for proc, _pod in list(self._running.values()):
            with contextlib.suppress(ProcessLookupError):  # it ended by itself meanwhile
                os.killpg(proc.pid, signal.SIGKILL)
        for thread in self._threads:
            thread.join(timeout=30)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _loop(self) -> None:
        renewed = 0.0
        while not self._stop.wait(0.5):
            if self.nodes and time.monotonic() - renewed > LEASE_SECONDS / 4:
                self._renew_leases()
                renewed = time.monotonic()
            listing = self.ground.kubectl("get", "pods", "-A", "-l", TRAINER_SELECTOR, "-o", "json", check=False)
            if listing.returncode:
                continue
            pods = json.loads(listing.stdout)["items"]
            self._end_deleted(pods)
            for pod in pods:
                key = pod["metadata"]["uid"]  # as a kubelet: a pod re-created under the same name is another pod
                if self.namespaces is not None and pod["metadata"]["namespace"] not in self.namespaces:
                    continue
                if key in self.started or pod["metadata"].get("deletionTimestamp"):
                    continue
                if self.nodes is None and pod["status"].get("phase") == "Running":
                    self.started.add(key)
                    self._spawn(self.run_pod, pod)
                elif self.nodes and pod["spec"].get("nodeName") in self.nodes \
                        and pod["status"].get("phase") == "Pending":
                    self.started.add(key)
                    self._spawn(self.run_pod, self._mark_running(pod))

    # ----------------------------------------------------------------- the kubelet of the shim's nodes
    def _register_nodes(self) -> None:
        """Ready, with a Lease: the node lifecycle controller then keeps them Ready while it is renewed."""
        for name in self.nodes or ():
            now = _now()
            ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet shim",
                     "lastHeartbeatTime": now, "lastTransitionTime": now}
            self.ground.kubectl("patch", "node", name, "--subresource=status", "--type=merge",
                                "-p", json.dumps({"status": {"conditions": [ready]}}))
        self._renew_leases()

    def _renew_leases(self) -> None:
        from kubernetes import client

        api = client.CoordinationV1Api(self.ground.api_client())
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a MicroTime
        for name in self.nodes or ():
            spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}
            try:
                api.patch_namespaced_lease(name, "kube-node-lease", {"spec": spec})
            except client.ApiException as err:
                if err.status != 404:
                    continue  # the next round renews it
                api.create_namespaced_lease("kube-node-lease", {"metadata": {"name": name}, "spec": spec})

    def _mark_running(self, pod: dict) -> dict:
        """What a kubelet reports once the container started: Running and Ready."""
        now = _now()
        container = pod["spec"]["containers"][0]
        status = {"phase": "Running", "startTime": now, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                  "conditions": [{"type": kind, "status": "True", "lastTransitionTime": now}
                                 for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                  "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                         "ready": True, "started": True, "restartCount": 0,
                                         "state": {"running": {"startedAt": now}}}]}
        report(self.ground, pod["metadata"]["namespace"], pod["metadata"]["name"], status, check=False)
        return {**pod, "status": status}

    def _end_deleted(self, pods: list[dict]) -> None:
        """SIGTERM the process of every pod it runs that is being deleted (or already gone)."""
        listed = {p["metadata"]["uid"]: p for p in pods}
        for uid, (proc, pod) in list(self._running.items()):
            now = listed.get(uid)
            key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
            if key in self.terminations or (now is not None and not now["metadata"].get("deletionTimestamp")):
                continue
            seen = now or pod
            grace = seen["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = seen["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
            self.terminations[key] = Termination(grace_seconds=int(grace))
            self._spawn(self._terminate, proc, key)

    def _terminate(self, proc: subprocess.Popen, key: str) -> None:
        end = self.terminations[key]
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):  # it ended by itself meanwhile
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=end.grace_seconds)
        except subprocess.TimeoutExpired:
            end.killed = True
            with contextlib.suppress(ProcessLookupError):  # it ended by itself meanwhile
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        end.exit_code, end.seconds = proc.returncode, round(time.monotonic() - started, 2)

    def env_of(self, pod: dict) -> dict[str, str]:
        """The container's environment with secretKeyRefs resolved and image paths mapped."""
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for item in pod["spec"]["containers"][0].get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            field_ref = (item.get("valueFrom") or {}).get("fieldRef")
            if field_ref and field_ref.get("fieldPath") == "spec.nodeName":
                env[item["name"]] = pod["spec"].get("nodeName", "")
                continue
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                secret = self.ground.kubectl("get", "secret", "-n", ns, ref["name"], "-o", "json", check=False)
                data = json.loads(secret.stdout).get("data", {}) if secret.returncode == 0 else {}
                if ref["key"] in data:
                    env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
        cache = self.cache_of(pod)
        cache.mkdir(parents=True, exist_ok=True)
        image_cache = env.get("LORA_CACHE_DIR", "/cache")
        for name, value in env.items():  # HF_HOME, TORCHINDUCTOR_CACHE_DIR, ...: under the image's /cache
            if value == image_cache or value.startswith(image_cache.rstrip("/") + "/"):
                env[name] = str(cache) + value[len(image_cache.rstrip("/")):]
        env["LORA_CACHE_DIR"] = str(cache)
        return {**env, **self.extra_env}

    def cache_of(self, pod: dict) -> Path:
        """The local folder behind the pod's /cache: a hostPath volume is its node's own folder, kept
        across pods as on a real node; otherwise the one folder every pod here shares, as before."""
        container = pod["spec"]["containers"][0]
        mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == "/cache"), None)
        volume = next((v for v in pod["spec"].get("volumes", []) if mount and v["name"] == mount["name"]), {})
        if "hostPath" in volume:
            return self.workdir / "nodes" / pod["spec"]["nodeName"] / volume["hostPath"]["path"].lstrip("/")
        return self.workdir / "node-cache"

    def launch(self, pod: dict) -> tuple[subprocess.Popen, Path]:
        """Starts the trainer container's command with its environment, in its own process group."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        command = container.get("command") or []
        binary = shutil.which(command[0], path=str(Path(sys.executable).parent)) if command else None
        argv = [binary or command[0], *command[1:], *container.get("args", [])]
        log = self.workdir / f"{ns}_{name}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "LORA_", "KUBECONFIG"))}
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env={**base, **self.env_of(pod)}, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.workdir, start_new_session=True)
        return proc, log

    def run_pod(self, pod: dict) -> int:
        """Runs the trainer container's command; patches the pod Succeeded or Failed with its exit code.

        On the shim's own nodes a pod being deleted is then removed (grace 0), as its kubelet
        does once the containers stopped."""
        ns, name, uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]
        container = pod["spec"]["containers"][0]
        proc, log = self.launch(pod)
        self._running[uid] = (proc, pod)
        code = proc.wait()
        self.exits[f"{ns}/{name}"] = code
        tail = log.read_text(errors="replace")[-1500:]
        report(self.ground, ns, name, terminated(code, message=tail, container=container["name"],
                                                 image=container["image"],
                                                 started=pod["status"].get("startTime", TIME)), check=False)
        self._running.pop(uid, None)
        if self.nodes and f"{ns}/{name}" in self.terminations:
            self._remove(ns, name, uid)
        return code

    def _remove(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet's last word on a deleted pod whose containers stopped: delete it with grace 0."""
        from kubernetes import client

        body = client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid))
        with contextlib.suppress(client.ApiException):  # gone already, or another pod of that name now
            client.CoreV1Api(self.ground.api_client()).delete_namespaced_pod(name, namespace, body=body)


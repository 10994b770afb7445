"""A kubelet stand-in for trainer pods: runs the pod's real command and environment as a local
process (no container runtime runs here), then reports the exit back as the pod's status.

kwok binds and "starts" the pod; this shim does what a kubelet would do with its container.
Secret references in the environment are resolved from the real Secret, spec.nodeName from the
pod; paths that exist only inside the image (/cache) are mapped to a local folder, one per node
for a hostPath cache.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .ground import Ground
from .podstatus import TIME, report, terminated

TRAINER_SELECTOR = "app.kubernetes.io/component=trainer"


@dataclass
class KubeletShim:
    """Watches trainer pods on the ground and runs each Running one once, as a local process."""

    ground: Ground
    workdir: Path
    namespaces: frozenset[str] | None = None
    """Run only the pods of these namespaces (None: every namespace). Kwok keeps other tests' trainer
    pods Running on the shared ground; a test that counts exits must not run those."""
    started: set[str] = field(default_factory=set)
    exits: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> KubeletShim:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            listing = self.ground.kubectl("get", "pods", "-A", "-l", TRAINER_SELECTOR, "-o", "json", check=False)
            if listing.returncode:
                continue
            for pod in json.loads(listing.stdout)["items"]:
                key = pod["metadata"]["uid"]  # as a kubelet: a pod re-created under the same name is another pod
                if self.namespaces is not None and pod["metadata"]["namespace"] not in self.namespaces:
                    continue
                if pod["status"].get("phase") == "Running" and key not in self.started:
                    self.started.add(key)
                    threading.Thread(target=self.run_pod, args=(pod,), daemon=True).start()

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
        return env

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
        """Runs the trainer container's command; patches the pod Succeeded or Failed with its exit code."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        proc, log = self.launch(pod)
        code = proc.wait()
        self.exits[f"{ns}/{name}"] = code
        tail = log.read_text(errors="replace")[-1500:]
        report(self.ground, ns, name, terminated(code, message=tail, container=container["name"],
                                                 image=container["image"],
                                                 started=pod["status"].get("startTime", TIME)), check=False)
        return code

"""The whole test ground: control plane + kwok GPU nodes + MinIO, as one object."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .controlplane import ControlPlane
from .minio import MinioServer
from .nodes import gpu_node
from .procs import wait_until
from .tools import tools_dir


class KubectlError(RuntimeError):
    """kubectl failed; the message carries its stderr."""


@dataclass
class Ground:
    """A running test ground; `Ground.up()` starts one, `down()` stops it and leaves no process."""

    workdir: Path
    bin_dir: Path
    control_plane: ControlPlane
    minio: MinioServer
    startup_seconds: float = 0.0
    node_names: list[str] = field(default_factory=list)

    @classmethod
    def up(cls, workdir: Path | None = None, gpu_nodes: int = 0, gpus: int = 8, gpu_type: str = "h100",
           build: bool = False, audit: bool = False) -> Ground:
        """Starts everything on free loopback ports and waits until pods can run on GPU nodes.

        Args:
            workdir: folder for PKI, data and logs (a new temporary folder when None).
            gpu_nodes: kwok GPU nodes to create at start.
            gpus: nvidia.com/gpu per node.
            gpu_type: value of the GPU-type label.
            build: build missing binaries first (minutes) instead of failing.
            audit: the API server logs every request to `workdir`/audit.log (see `ControlPlane.audit_log`).
        """
        started = time.monotonic()
        bin_dir = tools_dir(build=build)
        workdir = Path(workdir or tempfile.mkdtemp(prefix="lora-ground-"))
        workdir.mkdir(parents=True, exist_ok=True)
        plane = ControlPlane(bin_dir, workdir / "cluster", audit_log=workdir / "audit.log" if audit else None)
        ground = cls(workdir, bin_dir, plane,
                     MinioServer(bin_dir / "minio", workdir / "minio-data", workdir / "minio.log"))
        try:
            ground.minio.start()
            ground.control_plane.start()
            if gpu_nodes:
                ground.add_gpu_nodes(gpu_nodes, gpus=gpus, gpu_type=gpu_type)
        except BaseException:
            ground.down()
            raise
        ground.startup_seconds = time.monotonic() - started
        ground.write_state()
        return ground

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        """Runs the kubectl built with the control plane against this cluster.

        Raises:
            KubectlError: with kubectl's stderr, when `check` is set and kubectl fails.
        """
        done = subprocess.run([str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
                              capture_output=True, text=True, input=input, timeout=timeout)
        if check and done.returncode:
            raise KubectlError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done

    def apply(self, manifest: dict | list[dict]) -> None:
        """kubectl apply of one or more objects."""
        items = manifest if isinstance(manifest, list) else [manifest]
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def api_client(self):
        """A kubernetes.client.ApiClient for this cluster."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def add_gpu_nodes(self, count: int, gpus: int = 8, gpu_type: str = "h100", prefix: str = "gpu",
                      labels: dict[str, str] | None = None, taints: list[dict] | None = None,
                      wait: bool = True) -> list[str]:
        """Creates `count` kwok GPU nodes and waits until they are Ready."""
        start = len([n for n in self.node_names if n.startswith(f"{prefix}-")])
        names = [f"{prefix}-{i}" for i in range(start, start + count)]
        self.apply([gpu_node(n, gpus, gpu_type, labels, taints) for n in names])
        self.node_names.extend(names)
        if wait:
            self.kubectl("wait", "--for=condition=Ready", "--timeout=120s", *[f"node/{n}" for n in names],
                         timeout=150)
        return names

    def wait_for(self, check, timeout: float = 60, what: str = "condition", interval: float = 0.2) -> None:
        """Polls `check()` until true (a condition on the cluster, never a fixed sleep)."""
        wait_until(check, timeout, what, interval)

    def env(self) -> dict[str, str]:
        """Environment for a process that talks to this ground (kubectl, the operator, a trainer)."""
        return {"KUBECONFIG": str(self.kubeconfig), **self.minio.env()}

    def state_file(self) -> Path:
        return self.workdir / "ground.json"

    def write_state(self) -> None:
        """Records pids and addresses so `python -m testground down` can stop a ground it did not start."""
        procs = {name: p.pid for name, p in self.control_plane.procs.items()}
        procs["minio"] = self.minio.proc.pid if self.minio.proc else None
        self.state_file().write_text(json.dumps({
            "kubeconfig": str(self.kubeconfig), "server": self.control_plane.server,
            "minio": {"endpoint": self.minio.endpoint, "accessKey": self.minio.access_key,
                      "secretKey": self.minio.secret_key},
            "pids": procs, "startupSeconds": round(self.startup_seconds, 1), "creator": os.getpid(),
        }, indent=2))

    def down(self) -> None:
        """Stops every process of the ground."""
        self.control_plane.stop()
        self.minio.stop()

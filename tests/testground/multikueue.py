"""MultiKueue on the test ground: a worker cluster (its own etcd, kube-apiserver, controllers, kwok
GPU nodes and Kueue) beside the ground's control plane, which plays the manager.

The manager's Kueue reaches the worker through a MultiKueueCluster whose kubeconfig Secret holds the
worker's address, CA and a client certificate inline (Kueue refuses kubeconfigs that name files, see
validateKubeconfig in pkg/controller/admissionchecks/multikueue, v0.19). Both clusters share the
ground's MinIO, as clusters of one platform share its object store.
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .controlplane import ControlPlane
from .ground import Ground
from .kueue import KueueManager
from .tools import versions

KUBECONFIG_KEY = "kubeconfig"
"""The key of the MultiKueueCluster's Secret that holds the kubeconfig (kueue.MultiKueueConfigSecretKey)."""


def _data(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def inline_kubeconfig(control_plane: ControlPlane, name: str) -> str:
    """A kubeconfig for `control_plane`'s cluster-admin certificate with every file inlined."""
    pki = control_plane.pki
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": {"server": control_plane.server,
                                                "certificate-authority-data": _data(pki.ca_crt)}}],
        "users": [{"name": name, "user": {"client-certificate-data": _data(pki.admin_crt),
                                          "client-key-data": _data(pki.admin_key)}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
    })


REPO = Path(__file__).resolve().parents[2]
MANAGER_EXAMPLE = REPO / "examples/kueue/multikueue.yaml"
"""The manager's MultiKueue set-up users apply: kubeconfig Secret, MultiKueueCluster, MultiKueueConfig,
AdmissionCheck, and the ClusterQueue and LocalQueue behind it."""
WORKER_EXAMPLE = REPO / "examples/kueue/queues.yaml"
"""What a worker needs of Kueue: the single-cluster queues, with the same LocalQueue name."""


def example_objects(path: Path, namespace: str, kubeconfig: str | None = None) -> list[dict]:
    """The objects of an example file with its LocalQueues in `namespace` and its Secret's kubeconfig
    replaced by `kubeconfig`."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        if doc["kind"] == "LocalQueue":
            doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "Secret":
            doc["stringData"][KUBECONFIG_KEY] = kubeconfig
    return docs


KWOK_POD_STAGES = ("pod-ready.yaml", "pod-delete.yaml")
"""kwok's own fast pod stages (kustomize/stage/pod/fast in its module) less pod-complete, which ends a
pod owned by a Job the moment it runs: on the worker every pod is a Job's, and the kubelet shim ends it
when the real trainer exits. Stages in kwok's --config replace its default pod stages."""


def kwok_stages(folder: Path) -> Path:
    """A kwok config file holding `KWOK_POD_STAGES` from kwok's module (downloaded when missing)."""
    out = subprocess.run(["go", "mod", "download", "-json", f"sigs.k8s.io/kwok@{versions()['KWOK_VERSION']}"],
                         check=True, capture_output=True, text=True, cwd="/")
    stages = Path(json.loads(out.stdout)["Dir"]) / "kustomize/stage/pod/fast"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kwok-stages.yaml"
    path.write_text("---\n".join((stages / name).read_text() for name in KWOK_POD_STAGES))
    return path


@dataclass
class WorkerPlane(ControlPlane):
    """A control plane whose kwok leaves Job pods running until someone reports their end."""

    def _proc(self, name: str, *args: str):
        if name == "kwok":
            args = (*args, f"--config={kwok_stages(self.workdir)}")
        return super()._proc(name, *args)


@dataclass
class Worker:
    """A worker cluster with its own Kueue; `up()` starts it, `down()` leaves no process.

    `ground` is a `Ground` over the worker's control plane that shares the manager's MinIO (its
    kubectl, nodes and the kubelet shim work on it as on any ground); `down()` stops the worker's
    processes only, never the shared MinIO.
    """

    manager: Ground
    name: str
    workdir: Path
    ground: Ground | None = None
    kueue: KueueManager | None = None
    manager_kueue: KueueManager | None = None
    nodes: list[str] = field(default_factory=list)

    def up(self, gpu_nodes: int = 1, gpus: int = 1) -> Worker:
        """Starts the worker's control plane, `gpu_nodes` kwok nodes and its Kueue, then the manager's Kueue."""
        plane = WorkerPlane(self.manager.bin_dir, self.workdir / "cluster")
        self.ground = Ground(self.workdir, self.manager.bin_dir, plane, self.manager.minio)
        try:
            plane.start()
            self.nodes = self.ground.add_gpu_nodes(gpu_nodes, gpus=gpus, prefix=self.name)
            self.kueue = KueueManager(plane, self.manager.bin_dir / "kueue", self.workdir / "kueue").start(
                self.ground.kubectl)
            self.manager_kueue = KueueManager(self.manager.control_plane, self.manager.bin_dir / "kueue",
                                              self.workdir / "manager-kueue").start(self.manager.kubectl)
        except BaseException:
            self.down()
            raise
        return self

    def connect(self, namespace: str) -> list[dict]:
        """Applies the examples (`MANAGER_EXAMPLE` on the manager with this worker's kubeconfig,
        `WORKER_EXAMPLE` here) with their LocalQueues in `namespace`, which must exist on both, and
        waits until the MultiKueueCluster is connected and the AdmissionCheck active.

        Returns:
            The manager's objects, for the caller to delete.
        """
        manager = example_objects(MANAGER_EXAMPLE, namespace, inline_kubeconfig(self.ground.control_plane, self.name))
        cluster = next(d for d in manager if d["kind"] == "MultiKueueCluster")["metadata"]["name"]
        if cluster != self.name:
            raise ValueError(f"{MANAGER_EXAMPLE} names worker {cluster!r}, this worker is {self.name!r}")
        self.ground.apply(example_objects(WORKER_EXAMPLE, namespace))
        self.manager.apply(manager)
        check = next(d for d in manager if d["kind"] == "AdmissionCheck")["metadata"]["name"]
        for obj in (f"multikueuecluster/{cluster}", f"admissioncheck/{check}"):
            self.manager.kubectl("wait", "--for=condition=Active", "--timeout=90s", obj, timeout=100)
        return manager

    def down(self) -> None:
        """Stops both Kueues (webhooks unregistered first) and the worker's control plane."""
        if self.manager_kueue is not None:
            self.manager_kueue.stop(self.manager.kubectl)
            self.manager_kueue = None
        if self.kueue is not None and self.ground is not None:
            self.kueue.stop(self.ground.kubectl)
            self.kueue = None
        if self.ground is not None:
            self.ground.control_plane.stop()

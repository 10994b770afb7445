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
from .kueue import NAMESPACE, KueueManager
from .tools import versions

KUEUE = "kueue.x-k8s.io/v1beta2"
MULTIKUEUE_CONTROLLER = "kueue.x-k8s.io/multikueue"
"""The AdmissionCheck controller name of MultiKueue, and the spec.managedBy of the Jobs it dispatches."""
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


def gpu_queue(cluster_queue: str, flavor: str, gpus: int, namespace: str, local_queue: str,
              admission_check: str | None = None) -> list[dict]:
    """A ResourceFlavor, a ClusterQueue of `gpus` nvidia.com/gpu (behind `admission_check` if given) and
    a LocalQueue in `namespace` pointing at it: the same names on manager and worker, as MultiKueue
    expects (the dispatched Job keeps its namespace and queue-name label)."""
    spec: dict = {"namespaceSelector": {}, "resourceGroups": [{"coveredResources": ["nvidia.com/gpu"], "flavors": [
        {"name": flavor, "resources": [{"name": "nvidia.com/gpu", "nominalQuota": gpus}]}]}]}
    if admission_check:
        spec["admissionChecksStrategy"] = {"admissionChecks": [{"name": admission_check}]}
    return [
        {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": flavor}},
        {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": cluster_queue}, "spec": spec},
        {"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": local_queue, "namespace": namespace},
         "spec": {"clusterQueue": cluster_queue}},
    ]


def multikueue_objects(worker: str, kubeconfig: str, check: str) -> list[dict]:
    """The manager's MultiKueue set-up for one worker: the kubeconfig Secret (in Kueue's namespace),
    the MultiKueueCluster, a MultiKueueConfig listing it and the AdmissionCheck that uses it."""
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{worker}-kubeconfig", "namespace": NAMESPACE},
         "stringData": {KUBECONFIG_KEY: kubeconfig}},
        {"apiVersion": KUEUE, "kind": "MultiKueueCluster", "metadata": {"name": worker},
         "spec": {"clusterSource": {"kubeConfig": {"locationType": "Secret", "location": f"{worker}-kubeconfig"}}}},
        {"apiVersion": KUEUE, "kind": "MultiKueueConfig", "metadata": {"name": check},
         "spec": {"clusters": [worker]}},
        {"apiVersion": KUEUE, "kind": "AdmissionCheck", "metadata": {"name": check},
         "spec": {"controllerName": MULTIKUEUE_CONTROLLER,
                  "parameters": {"apiGroup": "kueue.x-k8s.io", "kind": "MultiKueueConfig", "name": check}}},
    ]


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

    def connect(self, check: str) -> None:
        """Registers the worker with the manager's Kueue under the AdmissionCheck `check` and waits until
        the MultiKueueCluster is connected and the AdmissionCheck active."""
        self.manager.apply(multikueue_objects(self.name, inline_kubeconfig(self.ground.control_plane, self.name),
                                              check))
        for obj in (f"multikueuecluster/{self.name}", f"admissioncheck/{check}"):
            self.manager.kubectl("wait", "--for=condition=Active", "--timeout=90s", obj, timeout=100)

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

"""What the Kueue cluster tests share: the queues they make, Jobs submitted as the operator renders
them, the Workloads read back, and watches that record every change in the apiserver's order."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from pathlib import Path

from urllib3.exceptions import ProtocolError

from lora_operator.api import API_VERSION, LoraTrainingJob, resolve_spec
from lora_operator.config import OperatorConfig
from lora_operator.kueue import ADMISSION_GATED_BY, build_trainer_job, workload_state
from lora_operator.render import pod_name

NS = "kq"
QUEUE = "gpu-queue"
POOL = {"lora-operator.io/pool": "kueue"}
CONFIG = OperatorConfig(trainer_image="trainer:1", storage_endpoint="127.0.0.1:9000", storage_secret="creds")
SPEC = resolve_spec({"baseModel": {"family": "sd15", "uri": "s3://models/tiny"}, "dataset": {"uri": "s3://d/x/"},
                     "output": {"uri": "s3://out/"}})


GROUP = "kueue.x-k8s.io/v1beta2"


def flavor(name: str, labels: dict[str, str]) -> dict:
    return {"apiVersion": GROUP, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": {"nodeLabels": labels}}


def cluster_queue(name: str, flavor_name: str, gpus: int, preempt: bool = False) -> dict:
    """A ClusterQueue of `gpus` GPUs of one flavor; with `preempt`, a higher priority preempts a lower one."""
    spec = {"namespaceSelector": {}, "resourceGroups": [{"coveredResources": ["nvidia.com/gpu"], "flavors": [
        {"name": flavor_name, "resources": [{"name": "nvidia.com/gpu", "nominalQuota": gpus}]}]}]}
    if preempt:
        spec["preemption"] = {"withinClusterQueue": "LowerPriority"}
    return {"apiVersion": GROUP, "kind": "ClusterQueue", "metadata": {"name": name}, "spec": spec}


def local_queue(name: str, namespace: str, cluster_queue_name: str) -> dict:
    return {"apiVersion": GROUP, "kind": "LocalQueue", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": cluster_queue_name}}


def queues() -> list[dict]:
    return [
        flavor("kq-gpu", POOL),
        cluster_queue("kq-training", "kq-gpu", 16, preempt=True),
        local_queue(QUEUE, NS, "kq-training"),
        {"apiVersion": GROUP, "kind": "WorkloadPriorityClass", "metadata": {"name": "kq-urgent"}, "value": 1000},
    ]


def owner(ground, name: str) -> str:
    """A LoraTrainingJob to own the Job (no operator runs here: it only anchors the owner reference)."""
    ground.apply({"apiVersion": API_VERSION, "kind": LoraTrainingJob.KIND, "metadata": {"name": name, "namespace": NS},
                  "spec": {**SPEC.to_resource(), "queueName": QUEUE}})
    return json.loads(ground.kubectl("get", "ltj", name, "-n", NS, "-o", "json").stdout)["metadata"]["uid"]


def ungated(manifest: dict) -> dict:
    """The Job as the operator leaves it once the dataset check passed (no operator runs in these tests)."""
    manifest["metadata"]["annotations"].pop(ADMISSION_GATED_BY)
    return manifest


def submit(ground, name: str, priority_class: str | None = None, hold: bool = False) -> None:
    uid = owner(ground, name)
    manifest = ungated(build_trainer_job(job_name=name, namespace=NS, job_uid=uid, spec=SPEC, queue=QUEUE,
                                         gpus=8, attempt=1, resume=False, config=CONFIG,
                                         priority_class=priority_class))
    if hold:
        manifest["spec"]["template"]["spec"]["schedulingGates"] = [HOLD]
    ground.apply(manifest)


def get(ground, kind: str, *args: str) -> list[dict]:
    return json.loads(ground.kubectl("get", kind, "-n", NS, "-o", "json", *args).stdout)["items"]


def get_in(ground, ns: str, kind: str) -> list[dict]:
    return json.loads(ground.kubectl("get", kind, "-n", ns, "-o", "json").stdout)["items"]


def workload_of(ground, name: str) -> dict | None:
    job_name = pod_name(name, 1)
    owned = [w for w in get(ground, "workloads.kueue.x-k8s.io")
             if any(o["kind"] == "Job" and o["name"] == job_name for o in w["metadata"].get("ownerReferences", []))]
    return owned[0] if owned else None


def workload_in(ground, ns: str, job_uid: str) -> dict | None:
    return next((w for w in get_in(ground, ns, "workloads.kueue.x-k8s.io")
                 if any(o.get("uid") == job_uid for o in w["metadata"].get("ownerReferences", []))), None)


def job_suspended(ground, name: str) -> bool:
    job = json.loads(ground.kubectl("get", "job", pod_name(name, 1), "-n", NS, "-o", "json").stdout)
    return bool(job["spec"]["suspend"])


def states(ground, names) -> dict[str, object]:
    return {n: workload_state(workload_of(ground, n), job_suspended(ground, n)) for n in names}


class WorkloadWatch(threading.Thread):
    """Every change of the namespace's Workloads, in the apiserver's order (a watch), from before the
    Jobs exist: kwok completes a Job's pods at once, faster than polling could see them overlap."""

    def __init__(self, ground):
        super().__init__(daemon=True)
        from kubernetes import client, watch

        self.api = client.CustomObjectsApi(ground.api_client())
        self.watch = watch.Watch()
        self.changes: list[dict] = []

    def run(self) -> None:
        with contextlib.suppress(ProtocolError):  # the apiserver ends the stream when the watch stops
            self._record()

    def _record(self) -> None:
        for event in self.watch.stream(self.api.list_namespaced_custom_object, "kueue.x-k8s.io", "v1beta2", NS,
                                       "workloads", timeout_seconds=150):
            self.changes.append(event["object"])

    def most_holding_quota(self) -> int:
        """The most Workloads that held quota at once, replaying the changes."""
        latest: dict[str, dict] = {}
        most = 0
        for obj in self.changes:
            latest[obj["metadata"]["name"]] = obj
            most = max(most, sum(workload_state(w).holds_quota for w in latest.values()))
        return most


HOLD = {"name": "test.lora-operator.io/hold"}
"""A scheduling gate on the quota test's pods: kwok ends a Job's pod the moment it is bound, so
without it the first Workload can finish before Kueue admits the second and nothing overlaps."""


def release_held_pods(ground) -> None:
    for pod in get(ground, "pods"):
        if HOLD in (pod["spec"].get("schedulingGates") or []):
            ground.kubectl("patch", "pod", pod["metadata"]["name"], "-n", NS, "--type=json",
                           "-p", '[{"op": "remove", "path": "/spec/schedulingGates"}]', check=False)


class JobWatch(threading.Thread):
    """Every version of a namespace's LoraTrainingJobs, in the apiserver's order: a state the operator
    holds for one reconcile (Queued with Kueue's eviction reason) is seen however short it lasts."""

    def __init__(self, ground, ns: str):
        super().__init__(daemon=True)
        from kubernetes import client, watch

        self.api, self.ns = client.CustomObjectsApi(ground.api_client()), ns
        self.watch = watch.Watch()
        self.versions: list[dict] = []

    def run(self) -> None:
        with contextlib.suppress(ProtocolError):
            for event in self.watch.stream(self.api.list_namespaced_custom_object, "lora-operator.io", "v1alpha1",
                                           self.ns, "loratrainingjobs", timeout_seconds=600):
                self.versions.append(event["object"])

    def statuses(self, name: str) -> list[dict]:
        return [v.get("status") or {} for v in self.versions if v["metadata"]["name"] == name]


def steps_logged(log: Path) -> list[int]:
    """The optimizer steps a trainer's log shows done (one ``step N/T`` line each at progress interval 0)."""
    return [int(m) for m in re.findall(r"^step (\d+)/", log.read_text(errors="replace"), re.M)]

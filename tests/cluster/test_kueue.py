"""Kueue admits the operator's batch/v1 Jobs: the real Kueue manager (built from its Go module) on the
test ground, the Jobs rendered by lora_operator.kueue, and the state the operator reads from the real
Workloads. A preemption is played with the real tiny trainer on a node whose kubelet is the shim.
The pod-history watcher of the fault tests records every trainer pod across the module: no node
ever held two trainer pods, no job ever had two live ones."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from pathlib import Path

import pytest
from urllib3.exceptions import ProtocolError

from chaos.chaoslib import PodHistory, double_bookings, double_runs
from lora_operator.api import API_VERSION, LoraTrainingJob, resolve_spec
from lora_operator.api.conditions import Phase
from lora_operator.config import OperatorConfig
from lora_operator.kueue import ADMISSION_GATED_BY, build_trainer_job, workload_state
from lora_operator.render import pod_name
from testground.kueue import KueueManager
from testground.operator import install_crds

pytestmark = pytest.mark.cluster

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


@pytest.fixture(scope="module")
def history(ground):
    """Every trainer pod's changes from the module's start, from a watch of the test's own."""
    watcher = PodHistory(ground).start()
    yield watcher
    watcher.stop()


@pytest.fixture(scope="module")
def kueue(ground, tmp_path_factory, history):
    install_crds(ground)
    ground.kubectl("create", "namespace", NS)
    ground.kubectl("create", "serviceaccount", CONFIG.trainer_service_account, "-n", NS)  # the operator makes it
    nodes = ground.add_gpu_nodes(3, prefix="kq", labels=POOL)  # 3 nodes of 8 GPUs; the quota holds 2 of them
    manager = KueueManager(ground.control_plane, ground.bin_dir / "kueue", tmp_path_factory.mktemp("kueue"))
    try:
        manager.start(ground.kubectl)
        ground.apply(queues())
        yield manager
    finally:
        manager.stop(ground.kubectl)
        # the session's ground goes on: later modules count on their own nodes only
        ground.kubectl("delete", "namespace", NS, "--wait=false")
        ground.kubectl("delete", "node", *nodes)
        ground.node_names[:] = [n for n in ground.node_names if n not in nodes]


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


def workload_of(ground, name: str) -> dict | None:
    job_name = pod_name(name, 1)
    owned = [w for w in get(ground, "workloads.kueue.x-k8s.io")
             if any(o["kind"] == "Job" and o["name"] == job_name for o in w["metadata"].get("ownerReferences", []))]
    return owned[0] if owned else None


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


def test_a_quota_of_two_gpu_nodes_over_three_is_never_exceeded(ground, kueue):
    names = ["q0", "q1", "q2"]
    watcher = WorkloadWatch(ground)
    watcher.start()
    time.sleep(1)  # the watch is open before the first Workload
    for name in names:
        submit(ground, name, hold=True)

    def two_hold_quota_and_one_waits() -> bool:
        held = [states(ground, [n])[n].holds_quota if workload_of(ground, n) else None for n in names]
        return held.count(True) == 2 and held.count(False) == 1

    ground.wait_for(two_hold_quota_and_one_waits, timeout=120, what="two Workloads admitted, one waiting",
                    interval=1)

    def finished() -> bool:
        release_held_pods(ground)
        return all(workload_state(workload_of(ground, n)).finished for n in names)

    ground.wait_for(finished, timeout=120, what="the three Workloads finished", interval=1)
    time.sleep(1)
    watcher.watch.stop()
    assert watcher.most_holding_quota() == 2  # two at once, never three
    # Kueue's flavor put every pod on the pool's nodes
    nodes = {p["spec"].get("nodeName") for p in get(ground, "pods")}
    assert nodes and all(n and n.startswith("kq-") for n in nodes), nodes


def test_deleting_the_training_job_removes_its_job_and_workload(ground, kueue):
    submit(ground, "gone")
    ground.wait_for(lambda: workload_of(ground, "gone") is not None, timeout=60, what="the Workload")
    ground.kubectl("delete", "ltj", "gone", "-n", NS, "--wait=false")

    def cleaned() -> bool:
        jobs = [j["metadata"]["name"] for j in get(ground, "jobs")]
        return pod_name("gone", 1) not in jobs and workload_of(ground, "gone") is None

    ground.wait_for(cleaned, timeout=90, what="the Job and Workload garbage-collected")


def test_the_operator_adapter_creates_reads_and_deletes_a_kueue_job(ground, kueue):
    """lora_operator.k8s.Kube against real Kueue: the Job it creates gets a Workload that it finds by the
    Job's uid, the admitted state maps to Running, the Job's pod (a suffixed name) is found by its
    controller-uid, and deleting the Job removes the Workload too."""
    from lora_operator.k8s import Kube

    kube = Kube(ground.api_client())
    uid = owner(ground, "adapter")
    manifest = ungated(build_trainer_job(job_name="adapter", namespace=NS, job_uid=uid, spec=SPEC, queue=QUEUE,
                                         gpus=8, attempt=1, resume=False, config=CONFIG))
    name = manifest["metadata"]["name"]
    assert kube.get_batch_job(NS, name) is None
    assert kube.create_batch_job(manifest) is True
    assert kube.create_batch_job(manifest) is False  # a second create of the same attempt is a no-op
    job = kube.get_batch_job(NS, name)
    job_uid = job["metadata"]["uid"]

    seen: list = []

    def admitted() -> bool:
        job = kube.get_batch_job(NS, name)
        seen.append(workload_state(kube.workload_of(NS, job_uid), bool(job["spec"].get("suspend"))))
        return seen[-1].phase == Phase.RUNNING  # admitted and unsuspended (or finished: kwok ends pods at once)

    ground.wait_for(admitted, timeout=90, what="the Workload admitted and the Job unsuspended", interval=1)
    assert "KueueAdmitted" in {c.type for c in seen[-1].conditions}, seen[-1]
    ground.wait_for(lambda: kube.pods_of_batch_job(NS, job_uid), timeout=60, what="the Job's pod")
    pods = kube.pods_of_batch_job(NS, job_uid)
    assert len(pods) == 1 and pods[0]["metadata"]["name"].startswith(name + "-"), [p["metadata"]["name"] for p in pods]
    assert pods[0]["spec"]["nodeName"].startswith("kq-")  # Kueue's flavor picked the pool
    assert kube.pods_of_batch_job(NS, "no-such-uid") == []

    kube.delete_batch_job(NS, name)
    kube.delete_batch_job(NS, name)  # gone already: fine
    ground.wait_for(lambda: kube.get_batch_job(NS, name) is None and kube.workload_of(NS, job_uid) is None,
                    timeout=90, what="the Job and its Workload gone", interval=1)


def test_the_operator_runs_a_queued_job_through_kueue_and_shows_kueues_reason(ground, kueue, tmp_path):
    """LORA_KUEUE_ENABLED: the operator makes a job's attempt a Job in its LocalQueue; Kueue admits it and
    the job runs to Succeeded on its pod (kwok ends it). A job in a queue without quota stays Queued with
    Kueue's reason and the Workload's conditions on its status, and the operator's own queue skips it."""
    from testground.operator import KWOK_DATASET, KWOK_MODEL, OperatorProcess, run_kubectl_json, storage_secret

    ns = "kq-op"
    ground.kubectl("create", "namespace", ns)
    ground.apply(storage_secret(ground, ns))
    ground.apply([cluster_queue("kq-none", "kq-gpu", 0), local_queue(QUEUE, ns, "kq-training"),
                  local_queue("no-quota", ns, "kq-none")])

    def ltj(name: str, queue: str, by_label: bool = False) -> dict:
        spec = {"baseModel": {"family": "sd15", "uri": KWOK_MODEL}, "dataset": {"uri": KWOK_DATASET},
                "output": {"uri": "s3://loras/"}, **({} if by_label else {"queueName": queue})}
        labels = {"kueue.x-k8s.io/queue-name": queue} if by_label else {}
        return {"apiVersion": API_VERSION, "kind": LoraTrainingJob.KIND,
                "metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": spec}

    def status(name: str) -> dict:
        return run_kubectl_json(ground, "get", "ltj", "-n", ns, name).get("status") or {}

    op = OperatorProcess(ground, tmp_path / "operator.log", extra_env={"LORA_KUEUE_ENABLED": "1"}).start()
    try:
        ground.apply([ltj("through", QUEUE), ltj("starved", "no-quota", by_label=True)])
        try:
            ground.wait_for(lambda: status("through").get("phase") == "Succeeded", timeout=120,
                            what="the Kueue job Succeeded", interval=1)
            ground.wait_for(lambda: any(c["type"] == "KueueQuotaReserved" for c in status("starved").get(
                "conditions") or []), timeout=60, what="the starved job's Workload mirrored", interval=1)
        except TimeoutError:
            raise AssertionError(f"{json.dumps(status('through'))[:2000]}\n{json.dumps(status('starved'))[:2000]}"
                                 f"\n--- operator log ---\n{op.tail(60)}") from None
        done = status("through")
        job = run_kubectl_json(ground, "get", "job", pod_name("through", 1), "-n", ns)
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
        assert job["metadata"]["ownerReferences"][0]["name"] == "through"
        attempt = done["attempts"][0]
        # the Job controller's pod, not one the operator placed: its name carries the Job's suffix
        assert attempt["pod"].startswith(pod_name("through", 1) + "-") and attempt["node"].startswith("kq-")
        assert attempt["reason"] == "TrainingComplete"
        assert "KueueAdmitted" in {c["type"] for c in done["conditions"]}

        starved = status("starved")
        assert starved["phase"] == "Queued"
        assert starved["resolvedSpec"]["queueName"] == "no-quota"  # from the label
        admitted = next(c for c in starved["conditions"] if c["type"] == "Admitted")
        reserved = next(c for c in starved["conditions"] if c["type"] == "KueueQuotaReserved")
        assert admitted["status"] == reserved["status"] == "False"
        assert admitted["reason"] == reserved["reason"] == "Pending"
        assert "insufficient" in reserved["message"] or "quota" in reserved["message"], reserved
        assert starved["message"] == f"Kueue: {reserved['message']}"
        assert not starved.get("attempts") and starved.get("queuePosition") is None  # not the operator's queue's
        held = run_kubectl_json(ground, "get", "job", pod_name("starved", 1), "-n", ns)
        assert held["spec"]["suspend"] is True and held["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "no-quota"
        # no pod of it anywhere (the finished job's pod is removed as any finished job's is; a deleted
        # pod of a Job goes once the Job controller has counted it, a moment later)
        ground.wait_for(lambda: get_in(ground, ns, "pods") == [], timeout=60, what="no pod left", interval=1)
    finally:
        op.stop()
        ground.kubectl("delete", "namespace", ns, "--wait=false")


def get_in(ground, ns: str, kind: str) -> list[dict]:
    return json.loads(ground.kubectl("get", kind, "-n", ns, "-o", "json").stdout)["items"]


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


def test_a_higher_priority_workload_preempts_a_running_job_which_resumes_with_its_steps(ground, kueue, tmp_path):
    """The real tiny trainer runs a job's Job on a node whose kubelet is the shim. A higher-priority
    job (kueue.x-k8s.io/priority-class) makes Kueue evict it: the Job controller deletes the pod, the
    shim SIGTERMs the trainer, which saves its resume state after the step in flight and exits within
    the grace period. The job shows Queued with Kueue's reason, the attempt is not counted, and once
    readmitted (a new Job whose pod's grace period comes from the measured save time) the trainer
    resumes after the saved step and finishes: at most one step lost."""
    from lora_operator.api.status import Progress
    from lora_operator.grace import termination_grace
    from testground.kubelet_shim import KubeletShim, shim_node
    from testground.operator import KWOK_DATASET, KWOK_MODEL, OperatorProcess, run_kubectl_json, storage_secret
    from testground.seed import make_dataset, upload
    from tinymodels import build_tiny_model

    ns, pool, floor = "kq-pre", {"lora-operator.io/pool": "kq-pre"}, 20
    upload(ground, "s3://models/tiny-sd15/", build_tiny_model("sd15", tmp_path / "tiny-sd15"))
    make_dataset(tmp_path / "dataset", count=4)
    upload(ground, "s3://datasets/kq-pre/", tmp_path / "dataset")
    if not ground.minio.client().bucket_exists("loras"):
        ground.minio.client().make_bucket("loras")
    ground.kubectl("create", "namespace", ns)
    ground.apply(storage_secret(ground, ns))
    ground.apply(shim_node("kq-shim-0", labels=pool))
    kwok_nodes = ground.add_gpu_nodes(1, prefix="kq-pre", labels=pool)
    ground.apply([flavor("kq-pre", pool), cluster_queue("kq-one-node", "kq-pre", 8, preempt=True),
                  local_queue(QUEUE, ns, "kq-one-node")])
    slow = {"apiVersion": API_VERSION, "kind": LoraTrainingJob.KIND, "metadata": {"name": "slow", "namespace": ns},
            "spec": {"queueName": QUEUE, "type": "lora",
                     "baseModel": {"family": "sd15", "uri": "s3://models/tiny-sd15"},
                     "dataset": {"uri": "s3://datasets/kq-pre/", "crop": {"mode": "center", "size": "32x32"}},
                     "network": {"dim": 4, "alpha": 4},
                     "training": {"steps": 30, "epochs": 1, "batchSize": 1, "mixedPrecision": "no",
                                  "gradientCheckpointing": "off"},
                     # no resume state between epoch ends: only the SIGTERM save keeps the steps
                     "checkpoints": {"everyEpochs": 1, "formats": ["kohya"], "stateEverySteps": 0},
                     "previews": {"everyEpochs": 0}, "output": {"uri": "s3://loras/"},
                     "placement": {"nodeSelector": {"type": "shim"}},
                     "retryPolicy": {"maxRetries": 0}}}
    urgent = {"apiVersion": API_VERSION, "kind": LoraTrainingJob.KIND,
              "metadata": {"name": "urgent", "namespace": ns, "labels": {"kueue.x-k8s.io/priority-class": "kq-urgent"}},
              "spec": {"queueName": QUEUE, "baseModel": {"family": "sd15", "uri": KWOK_MODEL},
                       "dataset": {"uri": KWOK_DATASET}, "output": {"uri": "s3://loras/"},
                       "placement": {"nodeSelector": {"type": "kwok"}}}}  # kwok ends its pod at once

    def status(name: str) -> dict:
        return run_kubectl_json(ground, "get", "ltj", "-n", ns, name).get("status") or {}

    watch = JobWatch(ground, ns)
    watch.start()
    op = OperatorProcess(ground, tmp_path / "operator.log", extra_env={
        "LORA_KUEUE_ENABLED": "1", "LORA_TRAINER_TERMINATION_GRACE_SECONDS": str(floor)}).start()
    shim = KubeletShim(ground, tmp_path / "pods", namespaces=frozenset({ns}), nodes=frozenset({"kq-shim-0"}),
                       extra_env={"LORA_PROGRESS_INTERVAL": "0"}).start()
    try:
        ground.apply(slow)
        try:
            ground.wait_for(lambda: status("slow").get("attempts"), timeout=120, what="slow admitted", interval=1)
            first = status("slow")["attempts"][0]["pod"]
            log1 = shim.workdir / f"{ns}_{first}.log"
            ground.wait_for(lambda: log1.exists() and len(steps_logged(log1)) >= 3, timeout=240,
                            what="three steps trained", interval=0.5)
            ground.apply(urgent)
            ground.wait_for(lambda: f"{ns}/{first}" in shim.exits, timeout=120, what="slow's trainer ended",
                            interval=0.5)
            ground.wait_for(lambda: status("urgent").get("phase") == "Succeeded", timeout=120,
                            what="urgent Succeeded", interval=1)
            ground.wait_for(lambda: status("slow").get("phase") in ("Succeeded", "Failed"), timeout=400,
                            what="slow finished", interval=2)
        except TimeoutError:
            raise AssertionError(f"{json.dumps(status('slow'))[:3000]}\n{json.dumps(status('urgent'))[:1500]}"
                                 f"\n--- operator log ---\n{op.tail(80)}") from None
        # the shim ended the deleted pod as a kubelet: SIGTERM, and the trainer exited by itself in time
        ended = shim.terminations[f"{ns}/{first}"]
        assert ended.grace_seconds == floor and not ended.killed and ended.exit_code == 143, (
            ended, log1.read_text(errors="replace")[-3000:])
        done = status("slow")
        assert done["phase"] == "Succeeded", done
        preempted, resumed = done["attempts"]
        assert preempted["reason"] == "Preempted" and preempted["counted"] is False, preempted
        assert "Kueue evicted the Job" in preempted["message"] and done.get("retries", 0) == 0
        # Queued with Kueue's reason (and its Evicted condition mirrored) once the pod had ended
        queued = [s for s in watch.statuses("slow") if s.get("phase") == "Queued" and len(s.get("attempts", [])) == 1
                  and s["attempts"][0].get("endTime")]
        assert queued, [(s.get("phase"), s.get("message")) for s in watch.statuses("slow")]
        admitted = next(c for c in queued[0]["conditions"] if c["type"] == "Admitted")
        assert admitted["status"] == "False" and admitted["reason"] == "Preempted", admitted
        assert queued[0]["message"].startswith("Kueue: "), queued[0]["message"]
        assert any(c["type"] == "KueueEvicted" and c["status"] == "True" for c in queued[0]["conditions"])
        # steps intact: the saved state is the last step attempt 1 trained, and attempt 2 continues after it
        trained = steps_logged(log1)
        log2 = shim.workdir / f"{ns}_{resumed['pod']}.log"
        saved = int(re.search(r"resuming after step (\d+)", log2.read_text()).group(1))
        assert max(trained) - 1 <= saved <= max(trained) < 30, (trained[-3:], saved)
        assert min(steps_logged(log2)) == saved + 1 and max(steps_logged(log2)) == 30
        assert done["progress"]["step"] == 30 and [c["name"] for c in done["checkpoints"]] == ["epoch-0001"]
        # the second attempt's pod got its grace period from the save the trainer measured on SIGTERM
        measured = Progress.model_validate(queued[0]["progress"])
        assert measured.state_save_seconds is not None and measured.step == saved, measured
        expected = termination_grace(CONFIG.model_copy(update={"trainer_termination_grace_seconds": floor}), measured)
        second = run_kubectl_json(ground, "get", "job", pod_name("slow", 2), "-n", ns)
        assert second["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == expected > floor
        assert run_kubectl_json(ground, "get", "ltj", "-n", ns, "urgent")["metadata"]["labels"] == urgent[
            "metadata"]["labels"]
    finally:
        watch.watch.stop()
        shim.stop()
        op.stop()
        ground.kubectl("delete", "namespace", ns, "--wait=false")
        ground.kubectl("delete", "node", "kq-shim-0", *kwok_nodes)
        ground.node_names[:] = [n for n in ground.node_names if n not in kwok_nodes]


def test_kueue_does_not_admit_a_job_until_its_dataset_check_passed(ground, kueue, tmp_path):
    """A job resolved while storage could not answer is Queued, but its Job keeps the operator's
    kueue.x-k8s.io/admission-gated-by gate: Kueue makes its Workload and admits nothing while storage
    is down; once the dataset check passes the operator removes the gate and Kueue admits it."""
    from testground.operator import OperatorProcess, kwok_job, run_kubectl_json, storage_secret

    ns = "kq-gate"
    ground.kubectl("create", "namespace", ns)
    ground.apply(storage_secret(ground, ns))
    ground.apply(local_queue(QUEUE, ns, "kq-training"))

    def status() -> dict:
        return run_kubectl_json(ground, "get", "ltj", "-n", ns, "gated").get("status") or {}

    op = OperatorProcess(ground, tmp_path / "operator.log", extra_env={"LORA_KUEUE_ENABLED": "1"}).start()
    job = kwok_job("gated", "h100", namespace=ns, queueName=QUEUE)
    job["spec"].pop("placement")
    try:
        ground.minio.stop()
        try:
            ground.apply(job)
            ground.wait_for(lambda: status().get("conditions") and next(
                (c for c in status()["conditions"] if c["type"] == "Admitted"), {}).get("reason") == "AdmissionGated",
                timeout=120, what="the job held at the gate", interval=1)
            batch = run_kubectl_json(ground, "get", "job", pod_name("gated", 1), "-n", ns)
            assert batch["metadata"]["annotations"][ADMISSION_GATED_BY] == "lora-operator.io/inputs"

            def seen_gated() -> bool:  # Kueue had quota to admit it at once: it says why it does not
                held = workload_in(ground, ns, batch["metadata"]["uid"]) or {}
                return any(c["type"] == "QuotaReserved" and c.get("reason") == "AdmissionGated"
                           for c in (held.get("status") or {}).get("conditions") or [])

            ground.wait_for(seen_gated, timeout=60, what="Kueue's Workload held AdmissionGated")
            held = workload_in(ground, ns, batch["metadata"]["uid"])
            assert held["metadata"]["annotations"][ADMISSION_GATED_BY] == "lora-operator.io/inputs"
            assert workload_state(held).holds_quota is False, held.get("status")
            assert "lora-operator.io/inputs" in workload_state(held).message
            assert run_kubectl_json(ground, "get", "job", pod_name("gated", 1), "-n", ns)["spec"]["suspend"] is True
            assert status()["phase"] == "Queued" and "until the dataset can be checked" in status()["message"]
        finally:
            ground.minio.start()
        ground.wait_for(lambda: status().get("phase") == "Succeeded", timeout=120, what="admitted and Succeeded",
                        interval=1)
        events = ground.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=gated").stdout
        assert "released to Kueue" in events
    except (TimeoutError, AssertionError) as err:
        raise AssertionError(f"{err}\n{json.dumps(status())[:2000]}\n--- operator log ---\n{op.tail(60)}") from None
    finally:
        op.stop()
        ground.kubectl("delete", "namespace", ns, "--wait=false")


def workload_in(ground, ns: str, job_uid: str) -> dict | None:
    return next((w for w in get_in(ground, ns, "workloads.kueue.x-k8s.io")
                 if any(o.get("uid") == job_uid for o in w["metadata"].get("ownerReferences", []))), None)


def test_no_node_ever_held_two_trainer_pods_and_no_job_had_two(history):
    """Across this module's tests (run after them): the apiserver's own record of every trainer pod."""
    events = [e for e in history.snapshot() if e.namespace.startswith("kq")]
    assert events, "no trainer pod recorded"
    assert double_bookings(events) == []
    assert double_runs(events) == []

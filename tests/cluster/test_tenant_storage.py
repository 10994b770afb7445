"""Tenant isolation in storage, on the real ground (issue 26 findings 1 and 2, issue 24 tenant isolation).

Two teams share one MinIO; each has a MinIO user whose policy reaches only its own bucket, and a
namespace whose `lora-storage` Secret holds that user's keys. The operator runs with no storage key
of its own, and the kubelet shim runs the real trainer for admitted jobs. Team A's jobs train,
report and finalize in A's bucket; pointed at B's bucket they fail at once with AccessDenied and B's
bucket is unchanged; an endpoint the platform does not allow fails before anything connects to it;
a job deleted and created again under the same name never sees the old run's files.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from pathlib import Path

import pytest
from minio.credentials import StaticProvider
from minio.minioadmin import MinioAdmin

from testground.kubelet_shim import KubeletShim
from testground.operator import OperatorProcess, install_crds, storage_secret
from testground.seed import make_dataset, upload
from tinymodels import build_tiny_model

pytestmark = pytest.mark.cluster

TEAMS = ("a", "b")


def bucket(team: str) -> str:
    return f"tenant-{team}"


def policy(team: str) -> dict:
    """A MinIO policy reaching only the team's bucket."""
    arn = f"arn:aws:s3:::{bucket(team)}"
    return {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": [arn, f"{arn}/*"]}]}


class Tenants:
    """The ground set up for two teams, an operator without storage keys and the kubelet shim."""

    def __init__(self, ground, tmp: Path):
        self.ground, self.ns, self.keys = ground, {}, {}
        install_crds(ground)
        root = ground.minio.client()
        admin = MinioAdmin(endpoint=ground.minio.endpoint, secure=False,
                           credentials=StaticProvider(ground.minio.access_key, ground.minio.secret_key))
        for team in TEAMS:
            if not root.bucket_exists(bucket(team)):
                root.make_bucket(bucket(team))
            user, secret = f"team-{team}-{uuid.uuid4().hex[:4]}", f"team-{team}-secret-{uuid.uuid4().hex}"
            admin.user_add(user, secret)
            admin.policy_add(f"only-{bucket(team)}", policy=policy(team))
            admin.policy_set(f"only-{bucket(team)}", user=user)
            self.keys[team] = (user, secret)
            self.ns[team] = f"team-{team}-{uuid.uuid4().hex[:6]}"
            ground.kubectl("create", "namespace", self.ns[team])
            body = storage_secret(ground, self.ns[team])
            body["stringData"] = {"accessKey": user, "secretKey": secret}
            ground.apply(body)
        model = build_tiny_model("sd15", tmp / "tiny-sd15")
        make_dataset(tmp / "dataset", count=4)
        for team in TEAMS:  # each team's bucket holds its own copy of the model and the dataset
            upload(ground, f"s3://{bucket(team)}/models/tiny-sd15/", model)
            upload(ground, f"s3://{bucket(team)}/datasets/shapes/", tmp / "dataset")
        ground.add_gpu_nodes(1, gpus=1, gpu_type="tenancy", prefix="tenancy")
        self.operator = OperatorProcess(ground, tmp / "operator.log").start()
        self.shim = KubeletShim(ground, tmp / "pods").start()

    def stop(self) -> None:
        self.shim.stop()
        self.operator.stop()

    def apply(self, team: str, name: str, **spec) -> None:
        """A tiny SD1.5 job of `team` (2 epochs of 2 steps, kohya checkpoints) with `spec` merged in."""
        own = f"s3://{bucket(team)}"
        body = {
            "type": "lora",
            "baseModel": {"family": "sd15", "uri": f"{own}/models/tiny-sd15"},
            "dataset": {"uri": f"{own}/datasets/shapes/", "crop": {"mode": "center", "size": "32x32"}},
            "network": {"dim": 4, "alpha": 4},
            "training": {"steps": 4, "epochs": 2, "batchSize": 1, "mixedPrecision": "no",
                         "gradientCheckpointing": "off"},
            "checkpoints": {"everyEpochs": 1, "formats": ["kohya"]},
            "previews": {"everyEpochs": 0},
            "output": {"uri": f"{own}/out/"},
            "placement": {"gpuType": "tenancy"},
            "retryPolicy": {"maxRetries": 2, "backoffSeconds": 1, "maxBackoffSeconds": 2},
        }
        for key, value in spec.items():
            body[key] = {**body[key], **value} if isinstance(body.get(key), dict) else value
        self.ground.apply({"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
                           "metadata": {"name": name, "namespace": self.ns[team]}, "spec": body})

    def job(self, team: str, name: str) -> dict | None:
        got = self.ground.kubectl("get", "ltj", name, "-n", self.ns[team], "-o", "json", check=False)
        return json.loads(got.stdout) if got.returncode == 0 else None

    def status(self, team: str, name: str) -> dict:
        return (self.job(team, name) or {}).get("status") or {}

    def wait_phase(self, team: str, name: str, phases: tuple[str, ...], timeout: float = 240) -> dict:
        self.ground.wait_for(lambda: self.status(team, name).get("phase") in phases, timeout=timeout,
                             what=f"{name} in {phases}", interval=0.5)
        return self.status(team, name)

    def objects(self, team: str) -> dict[str, str]:
        """Every object of the team's bucket, name -> etag (read with the root key)."""
        return {o.object_name: o.etag for o in self.ground.minio.client().list_objects(bucket(team), recursive=True)}


@pytest.fixture(scope="module")
def tenants(ground, tmp_path_factory):
    t = Tenants(ground, tmp_path_factory.mktemp("tenancy"))
    yield t
    t.stop()


class Listener:
    """A TCP socket on loopback that counts the connections it receives."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port, self.connections = self.sock.getsockname()[1], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_an_endpoint_the_platform_does_not_allow_fails_and_is_never_contacted(tenants):
    listener = Listener()
    try:
        endpoints = {"rogue-plain": f"127.0.0.1:{listener.port}",
                     "rogue-userinfo": f"http://{tenants.ground.minio.endpoint}@127.0.0.1:{listener.port}",
                     "rogue-metadata": "169.254.169.254:80"}
        for name, endpoint in endpoints.items():
            tenants.apply("a", name, storage={"endpoint": endpoint})
        for name in endpoints:
            status = tenants.wait_phase("a", name, ("Failed", "Queued", "Running", "Succeeded"), timeout=60)
            failed = next(c for c in status["conditions"] if c["type"] == "Failed")
            assert (status["phase"], failed["reason"]) == ("Failed", "EndpointNotAllowed"), status
            assert failed["message"].startswith("spec.storage.endpoint: "), failed
            assert failed["message"].endswith(f"allowed: {tenants.ground.minio.endpoint}"), failed
        assert listener.connections == 0
    finally:
        listener.close()


def test_a_team_a_job_naming_team_b_dataset_fails_access_denied_before_a_node(tenants):
    before = tenants.objects("b")
    tenants.apply("a", "reads-b", dataset={"uri": f"s3://{bucket('b')}/datasets/shapes/"})
    status = tenants.wait_phase("a", "reads-b", ("Failed", "Queued", "Running", "Succeeded"), timeout=60)
    failed = next((c for c in status.get("conditions", []) if c["type"] == "Failed"), {})
    assert (status["phase"], failed.get("reason")) == ("Failed", "StorageAccessDenied"), status
    assert failed["message"].startswith(f"spec.dataset.uri: list s3://{bucket('b')}/datasets/shapes/"), failed
    assert "AccessDenied" in failed["message"] and not status.get("attempts"), status
    assert tenants.objects("b") == before


def test_team_a_trains_reports_and_finalizes_in_its_own_bucket_with_its_own_secret(tenants):
    tenants.apply("a", "own")
    status = tenants.wait_phase("a", "own", ("Succeeded", "Failed"))
    assert status["phase"] == "Succeeded", (status, tenants.operator.tail())
    uid = tenants.job("a", "own")["metadata"]["uid"]
    prefix = f"s3://{bucket('a')}/out/{tenants.ns['a']}/own/{uid}/"
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 4
    assert sorted(c["name"] for c in status["checkpoints"]) == ["epoch-0001", "epoch-0002"]
    assert all(c["uri"].startswith(prefix) for c in status["checkpoints"])
    ground = tenants.ground
    ground.kubectl("patch", "ltj", "own", "-n", tenants.ns["a"], "--type=merge",
                   "-p", '{"spec":{"selectedCheckpoint":"epoch-0001"}}')
    ground.wait_for(lambda: (tenants.status("a", "own").get("output") or {}).get("checkpoint") == "epoch-0001",
                    timeout=60, what="epoch-0001 finalized")
    assert tenants.status("a", "own")["output"]["uri"] == prefix + "final/"
    key = prefix.removeprefix(f"s3://{bucket('a')}/") + "final/kohya.safetensors"
    assert key in tenants.objects("a")


def test_a_team_a_job_writing_to_team_b_bucket_fails_at_once_and_b_is_untouched(tenants):
    before = tenants.objects("b")
    tenants.apply("a", "writes-b", output={"uri": f"s3://{bucket('b')}/out/"})
    status = tenants.wait_phase("a", "writes-b", ("Succeeded", "Failed"))
    failed = next((c for c in status.get("conditions", []) if c["type"] == "Failed"), {})
    assert (status["phase"], failed.get("reason")) == ("Failed", "InputError"), (status, tenants.operator.tail())
    assert "spec.output.uri" in failed["message"] and "AccessDenied" in failed["message"], failed
    assert len(status["attempts"]) == 1  # an input error: never retried on a GPU node
    assert tenants.objects("b") == before


def test_a_recreated_job_never_reports_finalizes_or_resumes_the_deleted_runs_files(tenants):
    """Runs after the test above that trained "own" for 2 epochs; the new "own" trains 1."""
    old = tenants.job("a", "own")
    if old is None or old["status"].get("phase") != "Succeeded":
        pytest.skip("needs the finished run of test_team_a_trains_reports_and_finalizes_...")
    old_files = {k: v for k, v in tenants.objects("a").items() if f"/own/{old['metadata']['uid']}/" in k}
    tenants.ground.kubectl("delete", "ltj", "own", "-n", tenants.ns["a"], "--wait=true")
    tenants.apply("a", "own", training={"steps": 2, "epochs": 1}, selectedCheckpoint="epoch-0002")
    seen_totals, seen_checkpoints = set(), set()

    def finished() -> bool:
        status = tenants.status("a", "own")
        if status.get("progress"):
            seen_totals.add(status["progress"]["totalSteps"])
        seen_checkpoints.update(c["name"] for c in status.get("checkpoints") or ())
        return status.get("phase") in ("Succeeded", "Failed")

    tenants.ground.wait_for(finished, timeout=240, what="the new own finished", interval=0.2)
    new = tenants.job("a", "own")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert new["status"]["phase"] == "Succeeded", (new["status"], tenants.operator.tail())
    assert seen_totals == {2} and seen_checkpoints == {"epoch-0001"}
    # epoch-0002 exists only in the deleted run: selecting it must not copy the old weights into final/.
    tenants.ground.wait_for(lambda: "epoch-0002" in (tenants.status("a", "own").get("message") or ""),
                            timeout=30, what="the selection answered")
    status = tenants.status("a", "own")
    assert status.get("output") is None or status["output"].get("checkpoint") != "epoch-0002", status
    # refused twice over: the status lists only this run's checkpoints, and finalize copies only a
    # checkpoint the job's own manifest lists (tests/unit/test_results.py proves that one alone)
    assert "no checkpoint epoch-0002 (checkpoints: epoch-0001)" in status["message"], status
    prefix = f"out/{tenants.ns['a']}/own/{new['metadata']['uid']}/"
    assert not [k for k in tenants.objects("a") if k.startswith(prefix + "final/")]
    # The old run's files are still there, unchanged: nothing of the new run landed in them.
    assert {k: v for k, v in tenants.objects("a").items() if k in old_files} == old_files
    assert all("/own/" + old["metadata"]["uid"] + "/" in k for k in old_files)

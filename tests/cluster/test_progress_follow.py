"""A running job's follow against a real MinIO: progress.json every interval, manifest.json only once
the trainer wrote it again (its progress counts the writes); the status shows the same either way, and
the read when the job ends is complete."""

from __future__ import annotations

import base64
import io
import uuid
from datetime import UTC, datetime

import pytest

from lora_operator import status_transitions as st
from lora_operator.api import JobStatus, resolve_spec
from lora_operator.api.reports import CheckpointEntry, Manifest, ProgressReport
from lora_operator.config import OperatorConfig
from lora_operator.k8s import Conflict
from lora_operator.lifecycle import Lifecycle
from lora_operator.metrics import OperatorMetrics
from lora_operator.own_writes import OwnWrites
from lora_operator.views import JobView

pytestmark = pytest.mark.cluster

START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
UID = "0f0f0f0f-0000-0000-0000-000000000001"


class Kube:
    """The API server's part: the job's Secret; status patches recorded (or refused once: `conflict`)."""

    own_writes = OwnWrites()

    def __init__(self, minio) -> None:
        self.secret = {"accessKey": base64.b64encode(minio.access_key.encode()).decode(),
                       "secretKey": base64.b64encode(minio.secret_key.encode()).decode()}
        self.patches: list[dict] = []
        self.deleted: list[str] = []
        self.conflict = False

    def get_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        return dict(self.secret)

    def patch_job_status(self, namespace: str, name: str, patch: dict, resource_version: str | None = None) -> None:
        if self.conflict:
            self.conflict = False
            raise Conflict(name)
        self.patches.append(patch)

    def delete_pod(self, namespace: str, name: str) -> None:
        self.deleted.append(name)


class Job:
    """One running job, its trainer's files in MinIO, and its body as the watch shows each status write."""

    def __init__(self, minio, bucket: str) -> None:
        self.minio, self.bucket = minio.client(), bucket
        self.kube = Kube(minio)
        self.lifecycle = Lifecycle(self.kube, OperatorConfig(storage_endpoint=minio.endpoint), OperatorMetrics(),
                                   lambda *a: None, node_exists=lambda n: True)
        spec = resolve_spec({"baseModel": {"family": "sd15", "uri": "s3://models/tiny-sd15"},
                             "dataset": {"uri": "s3://datasets/d/"}, "output": {"uri": f"s3://{bucket}/"}})
        status = st.pod_running(st.admitted(st.queued(JobStatus(), position=None, now=START), node="n1", gpus=1,
                                            pod="j-a1", attempt=1, now=START), now=START).to_resource()
        self.body = {"metadata": {"name": "j", "namespace": "ns", "uid": UID, "generation": 1,
                                  "resourceVersion": "1", "creationTimestamp": "2026-12-06T12:00:00Z"},
                     "spec": {}, "status": {**status, "resolvedSpec": spec.to_resource()}}

    def put(self, key: str, text: str) -> None:
        data = text.encode()
        self.minio.put_object(self.bucket, f"ns/j/{UID}/{key}", io.BytesIO(data), len(data))

    def trainer_writes(self, step: int, manifest_writes: int | None, *epochs: int) -> None:
        """progress.json, after manifest.json when `epochs` are given."""
        if epochs:
            self.put("manifest.json", Manifest(job_uid=UID, checkpoints=[CheckpointEntry(
                name=f"epoch-{e:04d}", epoch=e, step=10 * e, format="kohya", size_bytes=3, sha256="b" * 64,
                path=f"checkpoints/epoch-{e:04d}/kohya.safetensors") for e in epochs]).model_dump_json())
        self.put("progress.json", ProgressReport(job_uid=UID, attempt=1, step=step, total_steps=30,
                                                 manifest_writes=manifest_writes).model_dump_json())

    def follow(self) -> dict:
        """One follow of the job's progress: the status patch written (applied to the body), {} if none."""
        before = len(self.kube.patches)
        self.lifecycle.sync_progress(JobView.of(self.body), START)
        return self._applied(before)

    def pod_ended(self) -> dict:
        before = len(self.kube.patches)
        pods = {"j-a1": {"metadata": {"name": "j-a1", "namespace": "ns"}, "spec": {"nodeName": "n1"},
                         "status": {"phase": "Succeeded"}}}
        self.lifecycle.reconcile(JobView.of(self.body), pods, START)
        return self._applied(before)

    def _applied(self, before: int) -> dict:
        if len(self.kube.patches) == before:
            return {}
        patch = self.kube.patches[-1]
        status = {k: v for k, v in {**self.body["status"], **patch}.items() if v is not None}
        rv = str(int(self.body["metadata"]["resourceVersion"]) + 1)
        self.body = {**self.body, "metadata": {**self.body["metadata"], "resourceVersion": rv}, "status": status}
        return patch

    def epochs(self) -> list[int]:
        return [c["epoch"] for c in self.body["status"].get("checkpoints", [])]


@pytest.fixture
def job(minio_server):
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    minio_server.client().make_bucket(bucket)
    return Job(minio_server, bucket)


def test_the_manifest_is_followed_when_the_trainer_counts_a_write_and_read_whole_at_the_end(job):
    job.trainer_writes(5, 1, 1)
    assert job.follow()["progress"]["step"] == 5 and job.epochs() == [1]
    job.put("manifest.json", "{not read}")  # rewritten: the progress does not count it yet
    job.trainer_writes(6, 1)
    patch = job.follow()
    assert patch["progress"]["step"] == 6 and "checkpoints" not in patch and job.epochs() == [1]
    job.trainer_writes(7, 2, 1, 2)  # the next progress counts the write
    assert job.follow()["progress"]["step"] == 7 and job.epochs() == [1, 2]
    job.trainer_writes(7, 2)
    assert job.follow() == {}  # nothing new: no status write
    job.put("manifest.json", Manifest(job_uid=UID, finished=True, checkpoints=[CheckpointEntry(
        name="epoch-0003", epoch=3, step=30, format="kohya", size_bytes=3, sha256="c" * 64,
        path="checkpoints/epoch-0003/kohya.safetensors")]).model_dump_json())  # the final write, then exit
    ended = job.pod_ended()
    assert ended["phase"] == "Succeeded" and job.epochs() == [3]  # read whole, whatever the progress said


def test_a_status_write_that_conflicted_has_the_manifest_read_again(job):
    job.trainer_writes(5, 1, 1)
    job.kube.conflict = True
    assert job.follow() == {}  # the write lost to another change of the job
    assert job.follow()["progress"]["step"] == 5 and job.epochs() == [1]


def test_a_trainer_that_does_not_count_manifest_writes_has_its_manifest_read_every_time(job):
    job.trainer_writes(5, None, 1)
    assert job.follow()["progress"]["step"] == 5 and job.epochs() == [1]
    job.trainer_writes(5, None, 1, 2)
    assert job.follow() == {"checkpoints": job.body["status"]["checkpoints"]} and job.epochs() == [1, 2]

"""A Kueue attempt's Job keeps the operator's admission gate while the dataset check cannot be made,
and loses it once the check passes; a dataset found empty fails the job and its Job goes.

The dataset check is `input_checks.check_input`, the same one resolve runs. A counting stand-in for
the API and the listing, as in test_confirmed_checks.py: what is asserted is which calls happen; the
real check runs against MinIO in tests/cluster/test_storage_minio.py and tests/cluster/test_bad_inputs.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lora_operator import input_checks
from lora_operator.api import JobSpec
from lora_operator.config import OperatorConfig
from lora_operator.kueue import ADMISSION_GATE, ADMISSION_GATED_BY
from lora_operator.lifecycle import Lifecycle
from lora_operator.metrics import OperatorMetrics
from lora_operator.storage import ObjectNotFound, StorageError
from lora_operator.views import JobView

SPEC = {"baseModel": {"family": "sd15", "uri": "s3://models/tiny"}, "dataset": {"uri": "s3://datasets/corgi/"},
        "output": {"uri": "s3://loras/"}, "queueName": "gpu-queue"}
BATCH = {"metadata": {"name": "j-1", "resourceVersion": "7", "annotations": {ADMISSION_GATED_BY: ADMISSION_GATE}}}


class Kube:
    def __init__(self):
        self.patches, self.annotated, self.deleted = [], [], []

    def get_secret_data(self, namespace, name):
        return {"accessKey": "YQ==", "secretKey": "cw=="}

    def patch_job_status(self, namespace, name, patch, resource_version=None):
        self.patches.append(patch)

    def annotate_batch_job(self, namespace, name, key, value, resource_version):
        self.annotated.append((name, key, value))

    def delete_batch_job(self, namespace, name):
        self.deleted.append(name)


def open_gate(kube: Kube) -> None:
    job = JobView.of({"metadata": {"name": "j", "namespace": "ns", "uid": "u", "resourceVersion": "1",
                                   "creationTimestamp": "2026-01-01T00:00:00Z"},
                      "spec": SPEC, "status": {"phase": "Queued", "resolvedSpec": SPEC}})
    lifecycle = Lifecycle(kube, OperatorConfig(kueue_enabled=True), OperatorMetrics(), lambda *a: None,
                          node_exists=lambda n: True)
    lifecycle.open_gate(job, JobSpec.model_validate(SPEC), BATCH, datetime.now(UTC))


def listing(monkeypatch, answer) -> None:
    """The dataset's listing: `answer` raised when an exception, else whether the prefix is empty."""
    def dataset_is_empty(store):
        assert store.uri.rstrip("/") == "s3://datasets/corgi"
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(input_checks, "dataset_is_empty", dataset_is_empty)


def test_storage_that_cannot_answer_keeps_the_gate_with_the_error_on_the_status(monkeypatch):
    listing(monkeypatch, StorageError("s3://datasets/corgi/: connection refused", uri="s3://datasets/corgi/",
                                      transient=True))
    kube = Kube()
    open_gate(kube)
    assert kube.annotated == [] and kube.deleted == []
    [patch] = kube.patches
    [admitted] = patch["conditions"]
    assert (admitted["type"], admitted["status"], admitted["reason"]) == ("Admitted", "False", "AdmissionGated")
    assert "connection refused" in patch["message"] and ADMISSION_GATE in patch["message"]


def test_a_dataset_that_holds_files_opens_the_gate(monkeypatch):
    listing(monkeypatch, False)
    kube = Kube()
    open_gate(kube)
    assert kube.annotated == [("j-1", ADMISSION_GATED_BY, None)] and kube.deleted == []


@pytest.mark.parametrize("answer", [True, ObjectNotFound("s3://datasets/corgi/")], ids=["empty", "missing"])
def test_a_dataset_found_empty_or_missing_fails_the_job_and_its_job_goes(monkeypatch, answer):
    listing(monkeypatch, answer)
    kube = Kube()
    open_gate(kube)
    assert kube.annotated == [] and kube.deleted == ["j-1"]
    [patch] = kube.patches
    assert patch["phase"] == "Failed" and patch["conditions"][-1]["reason"] == "DatasetEmpty"
    assert patch["message"].startswith("spec.dataset.uri: ") and "s3://datasets/corgi/" in patch["message"]

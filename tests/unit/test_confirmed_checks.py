"""resolve's Secret, dataset and base-model checks: a pass is remembered for a moment (a burst of jobs on one
Secret and dataset makes one read of each), a failure never is.

A counting stand-in for the API and the listing, not the local control plane and MinIO: what is
asserted is how many reads happen, which neither counts per caller. The real checks run against
them in tests/cluster/test_bad_inputs.py (missing Secret, Secret without keys, empty dataset) and
in every cluster test that queues a job."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lora_operator import input_checks
from lora_operator.config import OperatorConfig
from lora_operator.confirmed import Confirmed
from lora_operator.lifecycle import Lifecycle
from lora_operator.metrics import OperatorMetrics
from lora_operator.views import JobView


class Kube:
    def __init__(self, secret: dict | None):
        self.secret, self.secret_reads, self.patches = secret, 0, []

    def get_secret_data(self, namespace, name):
        self.secret_reads += 1
        return self.secret

    def patch_job_status(self, namespace, name, patch, resource_version=None):
        self.patches.append(patch)


def job(name: str) -> JobView:
    return JobView.of({"metadata": {"name": name, "namespace": "ns", "uid": name, "resourceVersion": "1",
                                    "creationTimestamp": "2026-01-01T00:00:00Z"},
                       "spec": {"baseModel": {"family": "sd15", "uri": "s3://models/tiny"},
                                "dataset": {"uri": "s3://datasets/corgi/"}, "output": {"uri": "s3://loras/"}},
                       "status": {}})


@pytest.fixture
def listings(monkeypatch):
    calls = {"n": 0, "empty": False, "models": 0, "model_empty": False}

    def dataset_is_empty(store):  # the dataset's and the base model's listings, counted apart
        if store.uri.rstrip("/") == "s3://datasets/corgi":
            calls["n"] += 1
            return calls["empty"]
        assert store.uri.rstrip("/") == "s3://models/tiny"
        calls["models"] += 1
        return calls["model_empty"]

    monkeypatch.setattr(input_checks, "dataset_is_empty", dataset_is_empty)
    return calls


def resolve_all(kube: Kube, names: list[str], confirmed: Confirmed | None = None) -> list[str]:
    lc = Lifecycle(kube, OperatorConfig(), OperatorMetrics(), lambda *a: None, node_exists=lambda n: True,
                   confirmed=confirmed or Confirmed())
    for name in names:
        lc.resolve(job(name), datetime.now(UTC))
    return [p["phase"] for p in kube.patches]


def test_a_burst_on_one_secret_and_dataset_reads_each_once(listings):
    kube = Kube({"accessKey": "YQ==", "secretKey": "cw=="})
    assert resolve_all(kube, ["a", "b", "c"]) == ["Queued"] * 3
    assert kube.secret_reads == 1 and listings["n"] == 1 and listings["models"] == 1


def test_a_missing_secret_is_read_again_for_every_job(listings):
    kube = Kube(None)
    assert resolve_all(kube, ["a", "b"]) == ["Failed", "Failed"]
    assert kube.secret_reads == 2


def test_an_empty_dataset_is_listed_again_for_every_job(listings):
    listings["empty"] = True
    kube = Kube({"accessKey": "YQ==", "secretKey": "cw=="})
    assert resolve_all(kube, ["a", "b"]) == ["Failed", "Failed"]
    assert listings["n"] == 2


def test_a_missing_base_model_is_listed_again_for_every_job(listings):
    listings["model_empty"] = True
    kube = Kube({"accessKey": "YQ==", "secretKey": "cw=="})
    assert resolve_all(kube, ["a", "b"]) == ["Failed", "Failed"]
    assert listings["models"] == 2
    assert kube.patches[0]["conditions"][-1]["reason"] == "ModelNotFound"


def test_a_pass_is_forgotten_after_its_window(listings):
    now = [0.0]
    confirmed = Confirmed(seconds=30, clock=lambda: now[0])
    kube = Kube({"accessKey": "YQ==", "secretKey": "cw=="})
    resolve_all(kube, ["a"], confirmed)
    now[0] = 31.0
    resolve_all(kube, ["b"], confirmed)
    assert kube.secret_reads == 2 and listings["n"] == 2

"""Deleting a job: no kopf finalizer (kopf has no change-detecting handler of ours, so it writes
no finalizer and no diff-base on any job); the operator removes the trainer pods itself, when the
job is being deleted and again when it is gone."""

from __future__ import annotations

from datetime import UTC, datetime

import kopf

from lora_operator import handlers  # noqa: F401 - registers the handlers
from lora_operator.config import OperatorConfig
from lora_operator.lifecycle import Lifecycle
from lora_operator.metrics import OperatorMetrics
from lora_operator.views import JobView


class RecordingKube:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, *args))


def job(phase: str, deleting: bool = False) -> dict:
    meta = {"name": "j", "namespace": "ns", "uid": "u", "resourceVersion": "7",
            "creationTimestamp": "2026-01-01T00:00:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T01:00:00Z"
    return {"metadata": meta, "spec": {}, "status": {"phase": phase}}


def pod(name: str, terminating: bool = False) -> dict:
    meta = {"name": name, "namespace": "ns", **({"deletionTimestamp": "2026-01-01T01:00:00Z"} if terminating else {})}
    return {"metadata": meta, "status": {"phase": "Running"}}


def lifecycle(kube: RecordingKube, emitted: list) -> Lifecycle:
    return Lifecycle(kube, OperatorConfig(), OperatorMetrics(), lambda *a: emitted.append(a[1:3]),
                     node_exists=lambda n: True)


def test_kopf_sees_no_change_detecting_handler_so_it_writes_no_finalizer_or_diff_base():
    registry = kopf.get_default_registry()
    jobs = kopf.Resource("lora-operator.io", "v1alpha1", "loratrainingjobs", namespaced=True)
    assert registry._watching.has_handlers(resource=jobs)  # the handlers are registered ...
    assert not registry._changing.has_handlers(resource=jobs)  # ... and none detects changes
    assert registry._changing.get_all_handlers() == []


def test_a_gone_job_has_its_pods_deleted_and_a_cancelled_event_if_it_was_unfinished():
    kube, emitted = RecordingKube(), []
    lifecycle(kube, emitted).gone(JobView.of(job("Running")), {"p1": pod("p1"), "p0": pod("p0", terminating=True)})
    assert kube.calls == [("delete_pod", "ns", "p1")]
    assert emitted == [("Normal", "Cancelled")]


def test_a_finished_job_that_is_gone_posts_no_cancelled_event():
    kube, emitted = RecordingKube(), []
    lifecycle(kube, emitted).gone(JobView.of(job("Succeeded")), {})
    assert kube.calls == [] and emitted == []


def test_a_job_being_deleted_reads_cancelled_and_loses_its_pods_while_it_still_exists():
    kube, emitted = RecordingKube(), []
    lifecycle(kube, emitted).reconcile(JobView.of(job("Running", deleting=True)), {"p1": pod("p1")},
                                       datetime.now(UTC))
    names = [c[0] for c in kube.calls]
    assert names == ["delete_pod", "patch_job_status"]
    patch = kube.calls[1][3]
    assert patch["phase"] == "Cancelled", patch
    assert emitted == [("Normal", "Cancelled")]

"""kopf's own bookkeeping on a job: a new job is queued only once kopf's finalizer and diff-base
are on it (so nothing of kopf's writes a waiting job), and the diff-base is built without
copying the parts of a body it throws away."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import kopf

from lora_operator.config import OperatorConfig
from lora_operator.handlers import LeanDiffBaseStorage, configure_persistence, kopf_bookkeeping_done
from lora_operator.lifecycle import Lifecycle
from lora_operator.metrics import OperatorMetrics
from lora_operator.views import JobView

DIFFBASE = "lora-operator.io/last-handled-configuration"


def settings() -> kopf.OperatorSettings:
    configured = kopf.OperatorSettings()
    configure_persistence(configured)
    return configured


def job(finalizers=(), annotations=None, status=None) -> dict:
    return {"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u", "resourceVersion": "1",
                         "creationTimestamp": "2026-01-01T00:00:00Z", "finalizers": list(finalizers),
                         "annotations": annotations or {}, "labels": {"team": "a"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"priority": 1, "dataset": {"uri": "s3://d/"}}, "status": status or {}}


def test_a_job_is_bookkept_only_with_both_kopfs_finalizer_and_its_diff_base():
    s = settings()
    finalizer = s.persistence.finalizer
    assert not kopf_bookkeeping_done(kopf.Body(job()), s)
    assert not kopf_bookkeeping_done(kopf.Body(job(finalizers=[finalizer])), s)
    assert not kopf_bookkeeping_done(kopf.Body(job(annotations={DIFFBASE: '{"spec": {}}'})), s)
    assert kopf_bookkeeping_done(kopf.Body(job(finalizers=[finalizer], annotations={DIFFBASE: '{"spec": {}}'})), s)


class Uncopyable:
    def __deepcopy__(self, memo):
        raise AssertionError("the status was deep-copied")


def test_the_lean_diff_base_equals_kopfs_and_never_copies_the_status():
    annotations = {DIFFBASE: "{}", "lora-operator.io/kopf-managed": "yes", "keep": "me",
                   "kubectl.kubernetes.io/last-applied-configuration": "{}"}
    body = job(annotations=annotations, status={"phase": "Queued"})
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix="lora-operator.io", key="last-handled-configuration")
    lean = LeanDiffBaseStorage(prefix="lora-operator.io", key="last-handled-configuration")
    assert lean.build(body=kopf.Body(body)) == kopfs.build(body=kopf.Body(body))
    essence = lean.build(body=kopf.Body({**copy.deepcopy(body), "status": {"big": Uncopyable()}}))
    essence["spec"]["dataset"]["uri"] = "changed"
    assert body["spec"]["dataset"]["uri"] == "s3://d/"  # still a copy, not a view


class RecordingKube:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append(name)


def test_a_new_job_is_not_resolved_while_kopfs_bookkeeping_is_still_to_come():
    kube = RecordingKube()
    lifecycle = Lifecycle(kube, OperatorConfig(), OperatorMetrics(), lambda *a: None, node_exists=lambda n: True)
    view = JobView.of(job())
    lifecycle.reconcile(view, {}, datetime.now(UTC), may_queue=False)
    assert kube.calls == []

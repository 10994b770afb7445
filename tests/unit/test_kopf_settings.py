"""kopf's per-event bookkeeping, made cheap: the diff-base essence kopf builds on every watch
event is built without copying the parts of a body it throws away."""

from __future__ import annotations

import copy

import kopf

from lora_operator.handlers import LeanDiffBaseStorage, configure_persistence

DIFFBASE = "lora-operator.io/last-handled-configuration"


def job(annotations=None, status=None) -> dict:
    return {"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u", "resourceVersion": "1",
                         "annotations": annotations or {}, "labels": {"team": "a"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"priority": 1, "dataset": {"uri": "s3://d/"}}, "status": status or {}}


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


def test_the_operator_configures_the_lean_storages():
    settings = kopf.OperatorSettings()
    configure_persistence(settings)
    assert isinstance(settings.persistence.diffbase_storage, LeanDiffBaseStorage)
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)

"""kopf's per-event bookkeeping, made cheap: no diff-base essence is built on a watch event,
which is safe only while the operator registers no handler that compares essences."""

from __future__ import annotations

import kopf

from lora_operator import handlers
from lora_operator.handlers import NoDiffBase, configure_persistence, configure_posting, configure_watching


class Uncopyable(dict):
    def __deepcopy__(self, memo):
        raise AssertionError("the body was deep-copied")


def test_no_registered_handler_compares_essences():
    """kopf reads the diff-base only for change-detecting handlers (on.create/update/delete/
    resume/field) and daemons or timers. Adding one makes `NoDiffBase` wrong: it must go then."""
    registry = kopf.get_default_registry()
    assert handlers.job_changed and handlers.trainer_pod_changed  # the module registered its handlers
    assert registry._watching.get_all_handlers(), "the event handlers should be registered"
    assert not registry._changing.get_all_handlers(), "a change-detecting handler needs a real diff-base storage"
    assert not registry._spawning.get_all_handlers(), "a daemon or timer needs a real diff-base storage"


def test_no_essence_is_built_fetched_or_stored():
    body = kopf.Body({"metadata": {"name": "j", "annotations": {}}, "spec": Uncopyable(a=1)})
    storage = NoDiffBase()
    assert storage.build(body=body) is None
    assert storage.build(body=body, extra_fields=["status.phase"]) is None
    assert storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence={"spec": {"a": 2}})
    assert not patch  # nothing written back onto the object


def test_the_operator_configures_the_storages():
    settings = kopf.OperatorSettings()
    configure_persistence(settings)
    assert isinstance(settings.persistence.diffbase_storage, NoDiffBase)
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)


def test_events_name_the_operator_and_its_pod_as_their_source():
    settings = kopf.OperatorSettings()
    configure_posting(settings, {"HOSTNAME": "lora-operator-7d9f-abcde"})
    assert settings.posting.reporting_component == "lora-operator"
    assert settings.posting.reporting_instance == "lora-operator-7d9f-abcde"
    assert settings.posting.event_name_prefix == "lora-operator-"
    configure_posting(settings, {})
    assert settings.posting.reporting_instance == "lora-operator"


def test_the_pod_watch_asks_the_api_server_for_trainer_pods_only():
    """kopf filters a handler's `labels=` on the operator's side; the stream itself must carry the selector, or
    every pod of the cluster reaches the operator. Jobs and nodes are watched whole."""
    from kopf._cogs.structs.references import Resource  # kopf's own resource reference, as its watcher uses

    settings = kopf.OperatorSettings()
    configure_watching(settings, list_chunk=500)
    pods = Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True)
    nodes = Resource(group="", version="v1", plural="nodes", kind="Node", namespaced=False)
    jobs = Resource(group="lora-operator.io", version="v1alpha1", plural="loratrainingjobs", namespaced=True)
    selector = ",".join(f"{k}={v}" for k, v in handlers.TRAINER_PODS.items())
    assert settings.watching.label_selectors.collect(pods) == [selector]
    assert "trainer" in selector
    assert settings.watching.label_selectors.collect(nodes) == []
    assert settings.watching.label_selectors.collect(jobs) == []
    assert settings.watching.chunk_size == 500

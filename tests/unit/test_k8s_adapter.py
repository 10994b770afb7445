"""The Kubernetes adapter without a cluster: responses it never reads are not parsed into client
models, and the bodies its conditional status writes return are remembered for its next reads.

A stand-in API, not the local control plane: what is asserted (the client called with
`_preload_content=False`, the raw response read and released) is invisible from the API server's
side. The same calls run against the real one in tests/cluster (every operator test creates pods)."""

from __future__ import annotations

import pytest

from lora_operator.k8s import Kube


class Response:
    def __init__(self):
        self.read_and_released = []

    def read(self):
        self.read_and_released.append("read")

    def release_conn(self):
        self.read_and_released.append("released")


class Api:
    """Stands in for CoreV1Api and CustomObjectsApi."""

    def __init__(self):
        self.kwargs: dict[str, dict] = {}
        self.response = Response()

    def create_namespaced_pod(self, namespace, body, **kwargs):
        self.kwargs["create"] = kwargs
        return self.response

    def delete_namespaced_pod(self, name, namespace, **kwargs):
        self.kwargs["delete"] = kwargs
        return self.response

    def create_namespaced_event(self, namespace, body, **kwargs):
        self.kwargs["event"] = {"namespace": namespace, "body": body, **kwargs}
        return self.response

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):
        rv = body.get("metadata", {}).get("resourceVersion")
        return {"metadata": {"uid": "u1", "name": name, "namespace": namespace,
                             "resourceVersion": f"{rv}+" if rv else "9"}, "status": body["status"]}


@pytest.fixture
def kube(monkeypatch):
    api = Api()
    monkeypatch.setattr(Kube, "core", property(lambda self: api))
    monkeypatch.setattr(Kube, "custom", property(lambda self: api))
    return Kube(api=None), api


@pytest.mark.parametrize("call", ["create", "delete"])
def test_pod_create_and_delete_responses_are_read_raw_and_released(kube, call):
    adapter, api = kube
    if call == "create":
        adapter.create_pod({"metadata": {"name": "p", "namespace": "ns"}})
    else:
        adapter.delete_pod("ns", "p")
    assert api.kwargs[call]["_preload_content"] is False
    assert api.response.read_and_released == ["read", "released"]


def test_an_event_posted_from_any_thread_reaches_the_api_naming_the_job_and_the_operator(kube):
    """Events go through the adapter, not kopf's poster (which lives in context variables that
    only kopf's own handler tasks have): a pool thread that never ran a handler posts them. The
    real API server's view of them (source, reporting component) is in tests/cluster/test_operator.py."""
    import threading

    from lora_operator.k8s import EventSource

    adapter, api = kube
    adapter = Kube(api=None, event_source=EventSource("lora-operator", "replica-1"))
    job = {"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
           "metadata": {"name": "j", "namespace": "ns", "uid": "u1"}}
    thread = threading.Thread(target=adapter.post_event, args=(job, "Warning", "InvalidSpec", "x" * 5000))
    thread.start()
    thread.join()
    for _ in range(200):
        if "event" in api.kwargs:
            break
        threading.Event().wait(0.01)
    sent = api.kwargs["event"]
    body = sent["body"]
    assert sent["namespace"] == "ns" and sent["_preload_content"] is False
    assert body["involvedObject"] == {"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
                                      "name": "j", "namespace": "ns", "uid": "u1"}
    assert (body["type"], body["reason"], len(body["message"])) == ("Warning", "InvalidSpec", 1000)
    assert (body["source"]["component"], body["reportingComponent"], body["reportingInstance"]) == (
        "lora-operator", "lora-operator", "replica-1")


def test_only_conditional_status_writes_are_remembered(kube):
    adapter, _ = kube
    adapter.patch_job_status("ns", "j", {"phase": "Cancelled"})
    assert len(adapter.own_writes) == 0
    adapter.patch_job_status("ns", "j", {"phase": "Pending"}, "5")
    stale = {"metadata": {"uid": "u1", "resourceVersion": "5"}, "status": {"phase": "Queued"}}
    assert adapter.own_writes.latest("u1", stale)["status"]["phase"] == "Pending"


def test_connect_keeps_a_connection_per_worker_thread_alive_and_names_the_operator(tmp_path, monkeypatch):
    """A kubeconfig pointing nowhere: the pool size is client-side state the API server never
    sees, so the local control plane would show nothing more. The User-Agent it names is checked
    against the real API server in tests/cluster/test_operator.py (the status writer in managedFields)."""
    from lora_operator.claims import ADMISSION_WORKERS
    from lora_operator.controller import RECONCILE_WORKERS
    from lora_operator.k8s import SYNC_CONNECTIONS

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("""
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    from kubernetes.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))  # read at import from KUBECONFIG
    kube = Kube.connect()
    assert kube.api.rest_client.pool_manager.connection_pool_kw["maxsize"] == SYNC_CONNECTIONS
    assert SYNC_CONNECTIONS > 2 * ADMISSION_WORKERS + RECONCILE_WORKERS  # claims, pod starts, reconciles
    assert kube.api.user_agent.startswith("lora-operator/")  # managedFields name the writer after it

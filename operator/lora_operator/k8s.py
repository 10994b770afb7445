"""The Kubernetes adapter: with `k8s_kueue` (its Kueue calls) and `k8s_base` (what both share),
the only modules that talk to the API server through the client.

Handlers call these functions from worker threads. Every write that depends on what the
operator read is conditional on the object's resourceVersion, so two replicas (or a
restarted one acting on a stale view) cannot both admit a job: the second gets a conflict.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .api import GROUP, VERSION
from .api.contract import APP_NAME, LABEL_NAME
from .api.names import is_subdomain
from .api.resources import ClusterLoraTrainingTemplate, LoraTrainingJob, LoraTrainingTemplate
from .k8s_base import Conflict, Forbidden, Refused, create_object, describe_error, discard_response, transient
from .k8s_kueue import KueueCalls
from .own_writes import OwnWrites

log = logging.getLogger(__name__)

DELETE_MEMORY_SECONDS = 60.0
SYNC_CONNECTIONS = 48
"""Kept-alive API connections of the client the worker threads share: the claim, pod-start and
reconcile threads (16 + 16 + 8, the position writer and the Event posters) make that many requests at once.
Below that (the client's default is 5 per CPU) urllib3 opens a new TLS connection for each request
beyond the pool and drops it afterwards (bench/RESULTS.md)."""
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
"""Accept header of a list that returns each object's metadata only."""
USER_AGENT = "lora-operator"
"""The client's User-Agent: the API server names the writer in managedFields after it, so
`kubectl get --show-managed-fields` shows `lora-operator` (not the client library) as the writer of status."""


def _version() -> str:
    try:
        return metadata.version("lora-operator")
    except metadata.PackageNotFoundError:
        return "dev"


MAX_EVENT_MESSAGE = 1000
"""Characters of an Event's message kept (the API server takes 1 KB)."""
EVENT_POSTERS = 4
"""Threads posting Events side by side (kopf posted the Events of different jobs concurrently):
a burst of thousands of new jobs makes an Event each, and one thread would fall behind. Each
Event carries the time it was made, so `kubectl describe` orders a job's Events right."""


@dataclass(frozen=True)
class EventSource:
    """Who the operator's Events say posted them: `From` in `kubectl describe` (component) and the
    replica (instance: its pod's name)."""

    component: str = USER_AGENT
    instance: str = USER_AGENT


def event_body(obj: Mapping[str, Any], type_: str, reason: str, message: str, source: EventSource,
               now: datetime) -> dict[str, Any]:
    """A core/v1 Event about `obj` (a body with apiVersion, kind and metadata)."""
    meta = obj["metadata"]
    stamp = now.isoformat()
    return {
        "metadata": {"namespace": meta["namespace"], "generateName": f"{source.component}-"},
        "type": type_, "reason": reason, "message": message[:MAX_EVENT_MESSAGE], "action": reason,
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid")},
        "source": {"component": source.component},
        "reportingComponent": source.component, "reportingInstance": source.instance,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": stamp,
    }


@dataclass
class Kube(KueueCalls):
    """Typed access to the few API calls the operator makes (the Kueue path's: `KueueCalls`)."""

    api: client.ApiClient
    own_writes: OwnWrites = field(default_factory=OwnWrites)
    """The bodies its conditional job status writes returned, until the watch shows them."""
    event_source: EventSource = field(default_factory=EventSource)
    _service_accounts: set[tuple[str, str]] = field(default_factory=set)
    _deleted: dict[tuple[str, str], float] = field(default_factory=dict)
    _events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    _event_posters: list[threading.Thread] = field(default_factory=list)
    _event_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def connect(cls, event_source: EventSource | None = None) -> Kube:
        """In-cluster config when running in a pod, else the KUBECONFIG / ~/.kube/config."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = SYNC_CONNECTIONS
        api = client.ApiClient(configuration)
        api.user_agent = f"{USER_AGENT}/{_version()}"
        return cls(api, event_source=event_source or EventSource())

    def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Posts an Event about `obj` (a job body) without waiting for it: the callers are the
        reconcile, claim and pass threads, and an Event is for the user, not a decision. A
        few threads post them (`EVENT_POSTERS`); a failed post is logged and dropped."""
        self._events.put(event_body(obj, type_, reason, message, self.event_source, datetime.now(UTC)))
        with self._event_lock:
            while len(self._event_posters) < EVENT_POSTERS:
                poster = threading.Thread(target=self._post_events, name="events", daemon=True)
                poster.start()
                self._event_posters.append(poster)

    def _post_events(self) -> None:
        while True:
            body = self._events.get()
            try:
                discard_response(self.core.create_namespaced_event(body["metadata"]["namespace"], body,
                                                           _preload_content=False))
            except Exception as err:  # noqa: BLE001 - an Event is informational; the job's status holds the truth
                log.warning("posting Event %s on %s failed: %s", body["reason"], body["involvedObject"]["name"],
                            describe_error(err))

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def create_pod(self, manifest: dict[str, Any]) -> bool:
        """Creates the pod; False when a pod of that name exists already (idempotent admission)."""
        return create_object(self.core.create_namespaced_pod, manifest, "pod")

    def ensure_service_account(self, namespace: str, name: str) -> None:
        """Creates the trainer ServiceAccount (no token automount) in a job's namespace once."""
        if (namespace, name) in self._service_accounts:
            return
        body = {"metadata": {"name": name, "labels": {LABEL_NAME: APP_NAME}},
                "automountServiceAccountToken": False}
        try:
            self.core.create_namespaced_service_account(namespace, body)
        except ApiException as err:
            if err.status != 409:
                raise
        self._service_accounts.add((namespace, name))

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        """Deletes a pod; a pod already gone is fine. A pod this process deleted in the last
        minute is not deleted again: every event of a finished job would otherwise repeat the
        request until the watch shows the pod's deletionTimestamp."""
        now = time.monotonic()
        if grace_seconds is None and self._deleted.get((namespace, name), 0.0) > now:
            return
        if len(self._deleted) > 10_000:
            self._deleted = {k: t for k, t in self._deleted.items() if t > now}
        self._deleted[namespace, name] = now + DELETE_MEMORY_SECONDS
        try:
            discard_response(self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace_seconds,
                                                     _preload_content=False))
        except ApiException as err:
            if err.status != 404:
                self._deleted.pop((namespace, name), None)  # failed: the next event tries again
                raise
        except Exception:
            self._deleted.pop((namespace, name), None)
            raise

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any],
                         resource_version: str | None = None) -> dict[str, Any]:
        """Merge-patches status of a job; with `resource_version`, only if nothing changed since.

        Raises:
            Conflict: the job changed (or is gone) since `resource_version`.
        """
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            written = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, LoraTrainingJob.PLURAL, name, body)
        except ApiException as err:
            if err.status in (404, 409):
                raise Conflict(f"{namespace}/{name}: {err.reason}") from err
            raise
        if resource_version:
            self.own_writes.wrote(resource_version, written)
        return written

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, LoraTrainingJob.PLURAL, name)
        except ApiException as err:
            if err.status != 404:
                raise

    def list_job_uids(self, namespace: str | None, chunk: int) -> set[str]:
        """The uids of every LoraTrainingJob (in `namespace`, or all), read as metadata only and
        `chunk` per page: 10000 whole jobs would parse to hundreds of MB."""
        uids: set[str] = set()
        token: str | None = None
        while True:
            paging: dict[str, Any] = {"limit": chunk, "_headers": {"Accept": METADATA_LIST},
                                      "_preload_content": False}
            if token:
                paging["_continue"] = token
            if namespace:
                response = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, LoraTrainingJob.PLURAL, **paging)
            else:
                response = self.custom.list_cluster_custom_object(GROUP, VERSION, LoraTrainingJob.PLURAL, **paging)
            page = json.loads(response.data)
            uids.update(item["metadata"]["uid"] for item in page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return uids

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, LoraTrainingJob.PLURAL, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def get_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The namespaced LoraTrainingTemplate of that name, else the cluster one, else None.

        A name that is no object name (``..``, ``a/b``) names nothing: put in the request path it
        would address another resource (``..`` the list of templates) rather than fail.
        """
        if not is_subdomain(name):
            return None
        for kind, call in (
            (LoraTrainingTemplate, lambda: self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, LoraTrainingTemplate.PLURAL, name)),
            (ClusterLoraTrainingTemplate, lambda: self.custom.get_cluster_custom_object(
                GROUP, VERSION, ClusterLoraTrainingTemplate.PLURAL, name)),
        ):
            try:
                return call()
            except ApiException as err:
                if err.status != 404:
                    raise
                log.debug("no %s %s", kind.KIND, name)
        return None

    def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The base64 data of a Secret, or None when it does not exist.

        Raises:
            Forbidden: the operator's role may not get it.
        """
        try:
            return self.core.read_namespaced_secret(name, namespace).data or {}
        except ApiException as err:
            if err.status == 404:
                return None
            if err.status == 403:
                raise Forbidden(f"Secret {namespace}/{name}: 403 {err.reason}") from err
            raise


__all__ = ["Conflict", "EventSource", "Forbidden", "Kube", "Refused", "describe_error", "event_body", "transient"]

"""The Kubernetes adapter: the only module that talks to the API server through the client.

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
from urllib3.exceptions import HTTPError

from .api import GROUP, VERSION
from .api.contract import APP_NAME, LABEL_NAME
from .api.names import is_subdomain
from .api.resources import ClusterLoraTrainingTemplate, LoraTrainingJob, LoraTrainingTemplate
from .own_writes import OwnWrites
from .storage import StorageError

log = logging.getLogger(__name__)

KUEUE_API = ("kueue.x-k8s.io", "v1beta2")
"""The Workload API the operator reads: Kueue v0.19 serves v1beta2 (its storage version) and v1beta1."""
VISIBILITY_GROUP = "visibility.kueue.x-k8s.io"
"""Kueue's visibility API (an aggregated API its manager serves): pending workloads and their positions."""
LABEL_CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
"""The label the Job controller puts on its pods: the uid of their Job."""

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


def _discard(response: Any) -> None:
    """Reads and releases a response the operator does not use. Called with `_preload_content=False`
    the client builds no model objects (a V1Pod is thousands of Python objects for a trainer pod
    with its spec in an environment variable); an error status still raises ApiException."""
    response.read()
    response.release_conn()


def _create(call: Any, manifest: dict[str, Any], what: str) -> bool:
    """Creates an object with `call` (create_namespaced_pod, _job); False when one of that name exists.

    Raises:
        Refused: the API server refused it (422, 400); the message is the server's, naming the field.
    """
    try:
        _discard(call(manifest["metadata"]["namespace"], manifest, _preload_content=False))
        return True
    except ApiException as err:
        if err.status == 409:
            return False
        if err.status in REFUSED_STATUSES:
            raise Refused(f"the API server refused the trainer {what}: {describe_error(err)}") from err
        raise


def _version() -> str:
    try:
        return metadata.version("lora-operator")
    except metadata.PackageNotFoundError:
        return "dev"


class Conflict(Exception):
    """The object changed since it was read; the caller re-reads and decides again."""


class Refused(Exception):
    """The API server refused an object as invalid (422 Invalid, 400 BadRequest). Sending it
    again cannot help: the message (the server's, naming the field) is for the job's user."""


REFUSED_STATUSES = frozenset({400, 422})
MAX_ERROR_TEXT = 600
"""Characters of an error kept for a status message."""


def describe_error(error: BaseException) -> str:
    """An error in one line for a status message: an API error as its status, reason and the
    server's own message (which names the field), anything else as its type and text."""
    if isinstance(error, ApiException):
        try:
            detail = json.loads(error.body or "{}").get("message") or ""
        except (ValueError, AttributeError):
            detail = str(error.body or "")
        return f"{error.status} {error.reason}: {detail}".rstrip(": ")[:MAX_ERROR_TEXT]
    if isinstance(error, Refused):
        return str(error)[:MAX_ERROR_TEXT]
    return f"{type(error).__name__}: {error}"[:MAX_ERROR_TEXT]


def transient(error: BaseException) -> bool:
    """Whether an error may clear up by itself: an API error other than a refusal (a 403 while
    RBAC is being set up, a 5xx, a timeout), a connection error. Anything else (a ValueError on
    a spec value, an overflow) fails the same way each time."""
    if isinstance(error, ApiException):
        return error.status not in REFUSED_STATUSES
    if isinstance(error, StorageError):
        return error.transient
    return isinstance(error, (OSError, HTTPError, Forbidden))


def _missing_kind(err: ApiException) -> str | None:
    """The kind a 404's Status names (details.kind); None for a path the server does not serve."""
    try:
        return (json.loads(err.body or "").get("details") or {}).get("kind")
    except (ValueError, AttributeError):
        return None


class Forbidden(Exception):
    """The operator's role may not read this object (403): RBAC not set up yet, or a Secret whose
    name the chart's RBAC does not list (the operator refuses those names before reading)."""


class Unavailable(Exception):
    """An aggregated API is not there (404: not registered; 503: its server does not answer) or
    the operator's role may not read it (403)."""


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
class Kube:
    """Typed access to the few API calls the operator makes."""

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
                _discard(self.core.create_namespaced_event(body["metadata"]["namespace"], body,
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

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    def create_batch_job(self, manifest: dict[str, Any]) -> bool:
        """Creates the batch/v1 Job of a Kueue attempt; False when one of that name exists already.

        Raises:
            Refused: the API server (or Kueue's webhook) refused it; the message names the field.
        """
        return _create(self.batch.create_namespaced_job, manifest, "Job")

    def get_batch_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A batch/v1 Job as a dict (its wire form), or None when it does not exist."""
        try:
            response = self.batch.read_namespaced_job(name, namespace, _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return json.loads(response.data)

    def delete_batch_job(self, namespace: str, name: str) -> None:
        """Deletes a Job and, in the background, its pods (Kueue then drops its Workload); gone is fine."""
        try:
            _discard(self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background",
                                                      _preload_content=False))
        except ApiException as err:
            if err.status != 404:
                raise

    def annotate_batch_job(self, namespace: str, name: str, key: str, value: str | None,
                           resource_version: str) -> None:
        """Sets (None: removes) one annotation of a Job, only if it did not change since
        `resource_version`; a Job already gone is fine.

        Raises:
            Conflict: the Job changed meanwhile; the caller reads it again.
        """
        patch = {"metadata": {"resourceVersion": resource_version, "annotations": {key: value}}}
        try:
            _discard(self.batch.patch_namespaced_job(name, namespace, patch, _preload_content=False))
        except ApiException as err:
            if err.status == 409:
                raise Conflict(f"Job {namespace}/{name} changed meanwhile") from err
            if err.status != 404:
                raise

    def workload_of(self, namespace: str, job_uid: str) -> dict[str, Any] | None:
        """The Kueue Workload that a Job (by uid) owns, or None while Kueue has not made one."""
        listed = self.custom.list_namespaced_custom_object(*KUEUE_API, namespace, "workloads")
        for workload in listed.get("items") or []:
            if any(o.get("uid") == job_uid for o in workload["metadata"].get("ownerReferences") or []):
                return workload
        return None

    def kueue_pending_workloads(self, namespace: str, queue: str, version: str,
                                limit: int) -> dict[str, Any] | None:
        """A LocalQueue's PendingWorkloadsSummary from Kueue's visibility API (`version`, at most
        `limit` items), or None when Kueue knows no such LocalQueue.

        Raises:
            Unavailable: the API (that version) is not served here, or the role may not read it.
        """
        path = f"/apis/{VISIBILITY_GROUP}/{version}/namespaces/{namespace}/localqueues/{queue}/pendingworkloads"
        request = self.api.param_serialize("GET", path, query_params=[("limit", limit)],
                                           header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(*request)
            data = response.read()
            if not 200 <= response.status <= 299:  # the generated APIs raise this; a bare call_api does not
                raise ApiException.from_response(http_resp=response, body=None, data=None)
        except ApiException as err:
            if err.status == 404 and _missing_kind(err) == "localqueue":
                return None  # the server's NotFound names the LocalQueue: the API is there, the queue is not
            if err.status in (403, 404, 503):
                raise Unavailable(describe_error(err)) from err
            raise
        return json.loads(data)

    def pods_of_batch_job(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        """The pods a Job made (their names carry a random suffix), as dicts, by its controller-uid."""
        response = self.core.list_namespaced_pod(namespace, label_selector=f"{LABEL_CONTROLLER_UID}={job_uid}",
                                                 _preload_content=False)
        return json.loads(response.data).get("items") or []

    def create_pod(self, manifest: dict[str, Any]) -> bool:
        """Creates the pod; False when a pod of that name exists already (idempotent admission)."""
        return _create(self.core.create_namespaced_pod, manifest, "pod")

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
            _discard(self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace_seconds,
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

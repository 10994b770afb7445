"""The Kubernetes adapter's Kueue calls: the batch/v1 Jobs of Kueue attempts and their pods, their
Workloads, and Kueue's visibility API (a LocalQueue's pending workloads). `k8s.Kube` has them
(`KueueCalls` is one of its bases), so callers hold one adapter; they live here to keep the
operator's core calls (`k8s`) apart from the Kueue path's."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .k8s_base import Conflict, create_object, describe_error, discard_response

KUEUE_API = ("kueue.x-k8s.io", "v1beta2")
"""The Workload API the operator reads: Kueue v0.19 serves v1beta2 (its storage version) and v1beta1."""
VISIBILITY_GROUP = "visibility.kueue.x-k8s.io"
"""Kueue's visibility API (an aggregated API its manager serves): pending workloads and their positions."""
LABEL_CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
"""The label the Job controller puts on its pods: the uid of their Job."""


class Unavailable(Exception):
    """An aggregated API is not there (404: not registered; 503: its server does not answer) or
    the operator's role may not read it (403)."""


def _missing_kind(err: ApiException) -> str | None:
    """The kind a 404's Status names (details.kind); None for a path the server does not serve."""
    try:
        return (json.loads(err.body or "").get("details") or {}).get("kind")
    except (ValueError, AttributeError):
        return None


class KueueCalls:
    """The Kueue path's API calls, over the client `api` of the class that mixes them in (`k8s.Kube`)."""

    api: client.ApiClient

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    def create_batch_job(self, manifest: dict[str, Any]) -> bool:
        """Creates the batch/v1 Job of a Kueue attempt; False when one of that name exists already.

        Raises:
            Refused: the API server (or Kueue's webhook) refused it; the message names the field.
        """
        return create_object(self.batch.create_namespaced_job, manifest, "Job")

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
            discard_response(self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background",
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
            discard_response(self.batch.patch_namespaced_job(name, namespace, patch, _preload_content=False))
        except ApiException as err:
            if err.status == 409:
                raise Conflict(f"Job {namespace}/{name} changed meanwhile") from err
            if err.status != 404:
                raise

    def workload_of(self, namespace: str, job_uid: str) -> dict[str, Any] | None:
        """The Kueue Workload that a Job (by uid) owns, or None while Kueue has not made one."""
        listed = client.CustomObjectsApi(self.api).list_namespaced_custom_object(*KUEUE_API, namespace, "workloads")
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

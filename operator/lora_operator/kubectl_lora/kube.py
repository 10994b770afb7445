"""LoraTrainingJobs through the Kubernetes client, with the plugin's one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from ..api.names import is_subdomain
from ..api.resources import GROUP, VERSION, ClusterLoraTrainingTemplate, LoraTrainingJob, LoraTrainingTemplate
from .errors import CliError

PLURAL = LoraTrainingJob.PLURAL


def current_namespace(kubeconfig: str | None, context: str | None = None) -> str:
    """The namespace of the kubeconfig's current (or named) context, else ``default``."""
    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError):
        return "default"
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    return (chosen or {}).get("context", {}).get("namespace") or "default"


class Jobs:
    """The LoraTrainingJobs of one namespace.

    Args:
        kubeconfig: Path of the kubeconfig; None reads KUBECONFIG or ~/.kube/config.
        namespace: None takes the context's namespace.
        context: kubeconfig context; None takes the current one.
    """

    def __init__(self, kubeconfig: str | None, namespace: str | None, context: str | None = None):
        try:
            self.api = client.CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig, context=context))
        except (config.ConfigException, OSError) as err:
            raise CliError(f"cannot load kubeconfig: {err}") from err
        self.namespace = namespace or current_namespace(kubeconfig, context)

    @classmethod
    def as_bearer(cls, host: str, token: str, namespace: str, ca_file: str | None = None) -> Jobs:
        """The jobs of `namespace` as the holder of `token` sees them (the in-cluster dashboard acts
        with each request's own token, never a ServiceAccount of its own)."""
        configuration = client.Configuration(host=host, api_key={"authorization": token},
                                             api_key_prefix={"authorization": "Bearer"})
        configuration.ssl_ca_cert = ca_file
        configuration.verify_ssl = ca_file is not None
        jobs = cls.__new__(cls)
        jobs.api = client.CustomObjectsApi(client.ApiClient(configuration))
        jobs.namespace = namespace
        return jobs

    def _call(self, what: str, fn, *args, namespaced: bool = True, **kwargs) -> Any:
        scope = (self.namespace,) if namespaced else ()
        try:
            return fn(GROUP, VERSION, *scope, PLURAL, *args, **kwargs)
        except ApiException as err:
            if err.status == 404 and what:
                raise CliError(f"ltj/{what} not found in namespace {self.namespace}") from err
            raise CliError(f"API server refused: {err.status} {err.reason}: {_message(err)}") from err
        except urllib3.exceptions.HTTPError as err:
            host = self.api.api_client.configuration.host
            raise CliError(f"cannot reach the API server at {host}: {err}") from err

    def get(self, name: str) -> dict:
        """The job as a dict. Raises CliError ``ltj/<name> not found in namespace <ns>``."""
        return self._call(name, self.api.get_namespaced_custom_object, name)

    def list(self, all_namespaces: bool = False, selector: str | None = None) -> list[dict]:
        """The jobs of the namespace (of every namespace with ``all_namespaces``) matching a label selector."""
        kwargs = {"label_selector": selector} if selector else {}
        if all_namespaces:
            return self._call("", self.api.list_cluster_custom_object, namespaced=False, **kwargs)["items"]
        return self._call("", self.api.list_namespaced_custom_object, **kwargs)["items"]

    def pod_log(self, pod: str, follow: bool) -> Iterator[str] | None:
        """The trainer pod's log as it comes (to its end with ``follow``); None when the pod is gone.

        Raises:
            CliError: The API server cannot give the log (the node's kubelet unreachable, say).
        """
        core = client.CoreV1Api(self.api.api_client)
        try:
            response = core.read_namespaced_pod_log(pod, self.namespace, follow=follow, _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return None
            raise CliError(f"no log from pod {pod}: {err.status} {err.reason}: {_message(err)}") from err
        except urllib3.exceptions.HTTPError as err:
            raise CliError(f"cannot reach the API server at {self.api.api_client.configuration.host}: {err}") from err
        return (chunk.decode(errors="replace") for chunk in response.stream(1024))

    def patch_spec(self, name: str, spec: dict) -> dict:
        """Merge-patch ``spec`` fields of a job."""
        return self._call(name, self.api.patch_namespaced_custom_object, name, {"spec": spec})

    def create(self, body: dict) -> dict:
        """Create a job; an existing name is a CliError."""
        try:
            return self._call("", self.api.create_namespaced_custom_object, body)
        except CliError as err:
            if "409" in str(err):
                raise CliError(f"ltj/{body['metadata'].get('name')} already exists in namespace "
                               f"{self.namespace}") from err
            raise


    def readable_or_none(self, fn, *args, **kwargs) -> Any:
        """``fn(*args)``, or None when RBAC forbids it (the caller then does without)."""
        try:
            return fn(*args, **kwargs)
        except ApiException as err:
            if err.status in (401, 403):
                return None
            raise CliError(f"API server refused: {err.status} {err.reason}: {_message(err)}") from err
        except urllib3.exceptions.HTTPError as err:
            raise CliError(f"cannot reach the API server at {self.api.api_client.configuration.host}: {err}") from err

    def queue_jobs(self, fallback: list[dict]) -> list[dict]:
        """Every namespace's jobs (they share the nodes), or ``fallback`` when not allowed to list them."""
        found = self.readable_or_none(self.api.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        return fallback if found is None else found["items"]

    def nodes(self) -> list[dict] | None:
        """The cluster's nodes as dicts, or None when not allowed to list them."""
        core = client.CoreV1Api(self.api.api_client)
        found = self.readable_or_none(core.list_node, _preload_content=False)
        return None if found is None else json.loads(found.data)["items"]

    def events(self, name: str) -> list[dict]:
        """The Events of job ``name``, oldest first ([] when not allowed to read them)."""
        core = client.CoreV1Api(self.api.api_client)
        found = self.readable_or_none(core.list_namespaced_event, self.namespace, _preload_content=False,
                                      field_selector=f"involvedObject.name={name},involvedObject.kind=LoraTrainingJob")
        items = [] if found is None else json.loads(found.data)["items"]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def watch(self, resource_version: str | None, timeout_seconds: int) -> Iterator[tuple[str, dict]]:
        """``(type, job)`` for each change of the namespace's jobs after ``resource_version``, for up
        to ``timeout_seconds``. A 410 (the version expired) is a CliError: list again."""
        w = watch.Watch()
        kwargs = {"timeout_seconds": timeout_seconds, "allow_watch_bookmarks": False}
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            for event in w.stream(self.api.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                                  **kwargs):
                if event["type"] == "ERROR":
                    raise CliError(f"watch ended: {event['object'].get('message')}")
                yield event["type"], event["object"]
        except ApiException as err:
            raise CliError(f"API server refused the watch: {err.status} {err.reason}: {_message(err)}") from err
        except urllib3.exceptions.HTTPError as err:
            raise CliError(f"cannot reach the API server at {self.api.api_client.configuration.host}: {err}") from err
        finally:
            w.stop()

    def templates(self) -> list[dict]:
        """The namespace's LoraTrainingTemplates, then the ClusterLoraTrainingTemplates (those RBAC lets one list)."""
        found = [self.readable_or_none(self.api.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                                       LoraTrainingTemplate.PLURAL),
                 self.readable_or_none(self.api.list_cluster_custom_object, GROUP, VERSION,
                                       ClusterLoraTrainingTemplate.PLURAL)]
        return [item for listing in found if listing for item in listing["items"]]

    def template(self, name: str) -> dict | None:
        """The template a job's spec.template names, as the operator looks it up: the namespace's
        LoraTrainingTemplate, else the ClusterLoraTrainingTemplate; None when neither exists."""
        if not is_subdomain(name):
            return None
        for call, scope, plural in (
                (self.api.get_namespaced_custom_object, (self.namespace,), LoraTrainingTemplate.PLURAL),
                (self.api.get_cluster_custom_object, (), ClusterLoraTrainingTemplate.PLURAL)):
            try:
                return call(GROUP, VERSION, *scope, plural, name)
            except ApiException as err:
                if err.status not in (403, 404):
                    raise CliError(f"API server refused: {err.status} {err.reason}: {_message(err)}") from err
            except urllib3.exceptions.HTTPError as err:
                raise CliError(f"cannot reach the API server at {self.api.api_client.configuration.host}: "
                               f"{err}") from err
        return None

    def list_with_version(self) -> tuple[list[dict], str | None]:
        """The namespace's jobs and the list's resourceVersion (where a watch starts)."""
        found = self._call("", self.api.list_namespaced_custom_object)
        return found["items"], found.get("metadata", {}).get("resourceVersion")


def _message(err: ApiException) -> str:
    try:
        return json.loads(err.body or "{}").get("message") or str(err.body)
    except ValueError:
        return str(err.body)

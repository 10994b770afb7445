"""LoraTrainingJobs through the Kubernetes client, with the plugin's one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from ..api.resources import GROUP, VERSION, LoraTrainingJob
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


def _message(err: ApiException) -> str:
    try:
        return json.loads(err.body or "{}").get("message") or str(err.body)
    except ValueError:
        return str(err.body)

"""What the operator's Kubernetes adapter modules share (`k8s`, `k8s_kueue`): the client's errors
as the operator's exceptions and messages, and the create and discard calls whose responses the
operator does not read."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from .storage import StorageError


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


class Forbidden(Exception):
    """The operator's role may not read this object (403): RBAC not set up yet, or a Secret whose
    name the chart's RBAC does not list (the operator refuses those names before reading)."""


def discard_response(response: Any) -> None:
    """Reads and releases a response the operator does not use. Called with `_preload_content=False`
    the client builds no model objects (a V1Pod is thousands of Python objects for a trainer pod
    with its spec in an environment variable); an error status still raises ApiException."""
    response.read()
    response.release_conn()


def create_object(call: Any, manifest: dict[str, Any], what: str) -> bool:
    """Creates an object with `call` (create_namespaced_pod, _job); False when one of that name exists.

    Raises:
        Refused: the API server refused it (422, 400); the message is the server's, naming the field.
    """
    try:
        discard_response(call(manifest["metadata"]["namespace"], manifest, _preload_content=False))
        return True
    except ApiException as err:
        if err.status == 409:
            return False
        if err.status in REFUSED_STATUSES:
            raise Refused(f"the API server refused the trainer {what}: {describe_error(err)}") from err
        raise

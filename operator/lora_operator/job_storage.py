"""A job's object storage, opened with that job's own Secret at an endpoint the platform allows.

The operator has no storage key of its own: whatever it reads, checks, copies or deletes for a
job (the dataset check, progress, the manifest, finalizing) it does with the credentials the
job's pod gets (``spec.storage.secretRef``, default ``LORA_STORAGE_SECRET``, in the job's
namespace), so a job can never reach further than its own Secret does.

Secrets are read through the Kubernetes adapter and kept for `SECRET_SECONDS`: thousands of
running jobs each read their progress every few seconds, and most share a handful of Secrets.
The minio clients are shared per endpoint and key by `storage.open_store`.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .api import JobSpec
from .config import OperatorConfig
from .endpoints import Target
from .policy import job_target
from .storage import ObjectStore, StorageError, open_store
from .storage.retry import RetryPolicy

SECRET_SECONDS = 60.0
"""How long a Secret read is reused; a rotated key is picked up within this time."""
SECRET_KEYS = ("accessKey", "secretKey")
QUICK = RetryPolicy(total_seconds=5.0)
"""Operator reads must not stall a handler for minutes: a short budget, then try next tick."""


class SecretReader(Protocol):
    def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None: ...


class SecretUnusable(StorageError):
    """The job's Secret is missing, lacks a key or holds a value that is not base64."""


@dataclass(frozen=True)
class Access:
    """Endpoint and credentials of one job's storage."""

    target: Target
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)


def secret_name(spec: JobSpec, config: OperatorConfig) -> str:
    """The Secret a job's pod and the operator use for its storage."""
    return (spec.storage.secret_ref if spec.storage and spec.storage.secret_ref else None) or config.storage_secret


@dataclass
class JobStorage:
    """Opens stores for jobs with their own Secrets (thread-safe)."""

    kube: SecretReader
    config: OperatorConfig
    seconds: float = SECRET_SECONDS
    clock: Callable[[], float] = time.monotonic
    _secrets: dict[tuple[str, str], tuple[float, Mapping[str, str]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        """The Secret's data (base64 values, as the API returns it), None when it does not exist.
        A found Secret is reused for `seconds`; a missing one is read again next time."""
        now = self.clock()
        with self._lock:
            cached = self._secrets.get((namespace, name))
            if cached and cached[0] > now:
                return cached[1]
        data = self.kube.get_secret_data(namespace, name)
        if data is not None:
            with self._lock:
                if len(self._secrets) > 10_000:
                    self._secrets = {k: v for k, v in self._secrets.items() if v[0] > now}
                self._secrets[namespace, name] = (now + self.seconds, data)
        return data

    def forget(self, namespace: str, name: str) -> None:
        """Drop a cached Secret (after storage refused its key), so the next use reads it again."""
        with self._lock:
            self._secrets.pop((namespace, name), None)

    def access(self, namespace: str, spec: JobSpec) -> Access:
        """The job's endpoint and keys.

        Raises:
            EndpointError: spec.storage.endpoint is not allowed (checked before the Secret is read).
            SecretUnusable: the Secret is missing, not one the platform allows, or lacks
                accessKey / secretKey.
            Forbidden: the operator's role may not read it (yet).
        """
        where = job_target(spec, self.config)
        name = secret_name(spec, self.config)
        ref = f"Secret {namespace}/{name}"
        allowed = self.config.storage_allowed_secret_names
        names = dict.fromkeys((self.config.storage_secret, *(allowed or ())))  # the chart lists the default too
        if allowed is not None and name not in names:
            raise SecretUnusable(f"spec.storage.secretRef: the operator may not read {ref}: name a storage Secret "
                                 f"the platform allows ({', '.join(names)}; chart "
                                 "values storage.existingSecret, storage.allowedSecretNames)", uri=ref)
        data = self.secret(namespace, name)  # Forbidden (a listed name, RBAC not there yet) is transient
        if data is None:
            raise SecretUnusable(f"spec.storage.secretRef: {ref} does not exist", uri=ref)
        missing = [key for key in SECRET_KEYS if key not in data]
        if missing:
            raise SecretUnusable(f"spec.storage.secretRef: {ref} lacks key(s) {', '.join(missing)}", uri=ref)
        try:
            keys = [base64.b64decode(data[key], validate=True).decode() for key in SECRET_KEYS]
        except (binascii.Error, UnicodeDecodeError):
            raise SecretUnusable(f"spec.storage.secretRef: {ref}: accessKey / secretKey are not base64 text",
                                 uri=ref) from None
        return Access(where, *keys)

    def open(self, uri: str, namespace: str, spec: JobSpec, *, quick: bool = True) -> ObjectStore:
        """The store at `uri` with the job's endpoint and Secret (file:// needs neither).

        Raises:
            EndpointError, SecretUnusable: see `access`.
        """
        if not uri.startswith("s3://"):
            return open_store(uri)
        access = self.access(namespace, spec)
        return open_store(uri, endpoint=access.target.address, secure=access.target.secure,
                          access_key=access.access_key, secret_key=access.secret_key,
                          policy=QUICK if quick else None)

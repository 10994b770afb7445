"""Reading job outputs from object storage with the plugin's flags / environment and one-line errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import urllib3

from ..api.contract import ENV_ACCESS_KEY, ENV_S3_ENDPOINT, ENV_S3_SECURE, ENV_SECRET_KEY
from ..storage import ObjectStore, RetryPolicy, StorageError, open_store
from ..storage.errors import InvalidUri
from .errors import CliError

CLI_RETRY = RetryPolicy(total_seconds=5.0, initial_delay=0.5, max_delay=2.0)
"""A person is waiting: give up on an unreachable endpoint within seconds, not the trainer's five minutes."""


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class StorageOptions:
    """Endpoint and credentials: flags first, then S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_SECURE."""

    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    secure: bool = True

    @classmethod
    def resolve(cls, endpoint: str | None, access_key: str | None, secret_key: str | None,
                secure: bool | None, env: Mapping[str, str] | None = None) -> StorageOptions:
        """Merge flags (None when not given) over the environment."""
        env = os.environ if env is None else env
        return cls(endpoint=endpoint or env.get(ENV_S3_ENDPOINT) or None,
                   access_key=access_key or env.get(ENV_ACCESS_KEY) or None,
                   secret_key=secret_key or env.get(ENV_SECRET_KEY) or None,
                   secure=secure if secure is not None else _truthy(env.get(ENV_S3_SECURE, "true")))


class Objects:
    """Whole objects and prefixes by full URI (``s3://bucket/key`` or ``file:///path``)."""

    def __init__(self, options: StorageOptions):
        self.options = options
        self._stores: dict[str, ObjectStore] = {}

    def _store(self, parent: str) -> ObjectStore:
        if parent not in self._stores:
            o = self.options
            self._stores[parent] = open_store(parent, endpoint=o.endpoint, access_key=o.access_key,
                                              secret_key=o.secret_key, secure=o.secure, policy=CLI_RETRY)
        return self._stores[parent]

    def _error(self, uri: str, err: Exception) -> CliError:
        where = f"storage at {self.options.endpoint or 'the default S3 endpoint'}"
        if uri.startswith("file://"):
            where = "local storage"
        return CliError(f"cannot read {uri} from {where}: {err}")

    def get_bytes(self, uri: str) -> bytes:
        """One object's content.

        Raises:
            CliError: Missing object, or unreachable storage (naming the endpoint).
        """
        parent, _, name = uri.rstrip("/").rpartition("/")
        try:
            data = self._store(parent + "/").get_bytes(name)
        except (StorageError, InvalidUri, urllib3.exceptions.HTTPError) as err:
            raise self._error(uri, err) from err
        if data is None:
            raise CliError(f"{uri} does not exist")
        return data

    def download(self, uri: str, target_dir: Path) -> Path:
        """Download a file, or a folder with everything under it, into ``target_dir``; returns the local path.

        Raises:
            CliError: Nothing at ``uri``, or unreachable storage (naming the endpoint).
        """
        parent, _, name = uri.rstrip("/").rpartition("/")
        target = target_dir / name
        try:
            store = self._store(parent + "/")
            if store.stat(name) is not None:
                store.get_file(name, target)
                return target
            if not store.download_prefix(name + "/", target):
                raise CliError(f"{uri} does not exist")
        except (StorageError, InvalidUri, urllib3.exceptions.HTTPError) as err:
            raise self._error(uri, err) from err
        return target


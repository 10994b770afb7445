"""Object storage shared by the operator and the trainer: s3:// (minio SDK) and file://.

`open_store` / `store_from_env` return an `ObjectStore` whose keys are relative to the
URI's prefix. Transient failures are retried with exponential backoff for up to five
minutes by default (`RetryPolicy`); what finally fails raises `StorageError` naming the URI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from ..api.contract import ENV_ACCESS_KEY, ENV_S3_ENDPOINT, ENV_S3_REGION, ENV_S3_SECURE, ENV_SECRET_KEY
from ..endpoints import DEFAULT_ENDPOINT
from .base import ObjectInfo, ObjectStore
from .errors import InvalidUri, ObjectNotFound, StorageError
from .local import LocalStore
from .retry import RetryPolicy, call_with_retry, is_transient
from .s3 import S3Store, make_client
from .uri import as_prefix, join_key, parse_uri


@lru_cache(maxsize=256)
def _shared_client(endpoint: str, access_key: str | None, secret_key: str | None, secure: bool,
                   region: str | None):
    """One client (connection pool, TLS context, bucket regions) per endpoint and identity: the
    operator opens a store per job event, and a new client each time cost a CA-bundle load, a
    new connection and a region lookup per read. Minio clients are thread-safe. The operator uses
    each job's own Secret, so there is one identity per distinct Secret in use: 256 covers a
    platform's teams; beyond it the least recently used client is rebuilt when next needed."""
    return make_client(endpoint, access_key, secret_key, secure=secure, region=region)


def open_store(uri: str, *, endpoint: str | None = None, access_key: str | None = None,
               secret_key: str | None = None, secure: bool = True, region: str | None = None,
               policy: RetryPolicy | None = None) -> ObjectStore:
    """Open the store for a URI prefix.

    Args:
        uri: ``s3://bucket/prefix/`` or ``file:///abs/folder``.
        endpoint: ``host:port`` of the S3 endpoint (s3:// only). Default: AWS S3.
        access_key: S3 access key (s3:// only).
        secret_key: S3 secret key (s3:// only).
        secure: TLS to the endpoint. Default: true.
        region: Bucket region; None asks the server.
        policy: Retry budget. Default: five minutes of exponential backoff.

    Raises:
        InvalidUri: Not an s3:// or file:// URI.
    """
    scheme, bucket, key = parse_uri(uri)
    if scheme == "file":
        return LocalStore(Path(key), uri=Path(key).as_uri() + "/")
    if scheme != "s3":
        raise InvalidUri(f"{uri!r}: {scheme}:// is not an object store (use s3:// or file://)")
    client = _shared_client(endpoint or DEFAULT_ENDPOINT, access_key, secret_key, secure, region)
    prefix = as_prefix(key)
    return S3Store(client, bucket, prefix, uri=f"s3://{bucket}/{prefix}", policy=policy)


def store_from_env(uri: str, env: Mapping[str, str] | None = None, *,
                   policy: RetryPolicy | None = None) -> ObjectStore:
    """Open a store with the endpoint and credentials of the trainer contract's environment.

    Reads ``S3_ENDPOINT`` (host:port), ``S3_SECURE`` ("true"/"false", default true),
    ``S3_REGION`` (optional), ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``.
    """
    env = os.environ if env is None else env
    return open_store(
        uri,
        endpoint=env.get(ENV_S3_ENDPOINT) or None,
        access_key=env.get(ENV_ACCESS_KEY),
        secret_key=env.get(ENV_SECRET_KEY),
        secure=env.get(ENV_S3_SECURE, "true").strip().lower() in ("1", "true", "yes", "on"),
        region=env.get(ENV_S3_REGION) or None,
        policy=policy,
    )


__all__ = [
    "InvalidUri", "LocalStore", "ObjectInfo", "ObjectNotFound", "ObjectStore", "RetryPolicy", "S3Store",
    "StorageError", "as_prefix", "call_with_retry", "is_transient", "join_key", "make_client", "open_store",
    "parse_uri", "store_from_env",
]

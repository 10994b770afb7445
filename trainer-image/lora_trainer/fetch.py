"""Fetching models (the base model, the tagger) into the node-local cache.

- ``file://``: used in place, nothing is copied.
- ``s3://``: downloaded into an entry of the node's model cache (`model_cache`) keyed by the URI
  and every object's ETag and size, large objects as parallel ranged GETs (`lora_operator.storage`).
  A second fetch of an unchanged model is a listing only; a changed model is a new entry.
- ``hf://org/name[@revision]``: ``huggingface_hub.snapshot_download`` into ``<cache>/hf``,
  with ``HF_TOKEN`` for gated or private repositories.

A URI naming one object (``s3://models/x.safetensors``) yields that file; a prefix yields the folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lora_operator.api.contract import ENV_CACHE_BUDGET, ENV_HF_TOKEN
from lora_operator.storage import (
    InvalidUri,
    RetryPolicy,
    StorageError,
    as_prefix,
    parse_uri,
    store_from_env,
)

from .errors import ModelError, TransientError
from .model_cache import cached_objects

log = logging.getLogger(__name__)

FILE_WORKERS = 4
"""Objects downloaded at once (each large one is itself split into parallel ranges)."""


def fetch_model(uri: str, cache_dir: Path, *, env: Mapping[str, str] | None = None,
                policy: RetryPolicy | None = None) -> Path:
    """Make a model available locally and return its path.

    Args:
        uri: ``s3://bucket/prefix/``, ``s3://bucket/file.safetensors``, ``file:///abs/path``
            or ``hf://org/name[@revision]``.
        cache_dir: The node-local cache (``LORA_CACHE_DIR``).
        env: Storage credentials and endpoint, ``HF_TOKEN``, ``HF_ENDPOINT``. Default: os.environ.
        policy: Retry budget for storage. Default: five minutes.

    Returns:
        The local folder (or file, when the URI names one object).

    Raises:
        ModelError: The URI is malformed, names nothing, or is refused (names the URI).
        TransientError: The storage stayed unreachable for the whole retry budget.
    """
    env = os.environ if env is None else env
    try:
        scheme, bucket, key = parse_uri(uri)
    except InvalidUri as exc:
        raise ModelError(str(exc)) from exc
    if scheme == "file":
        path = Path(key)
        if not path.exists():
            raise ModelError(f"model {uri} not found: {path} does not exist")
        return path
    if scheme == "hf":
        return _fetch_hf(uri, bucket, key, cache_dir, env)
    try:
        return _fetch_s3(uri, bucket, key, cache_dir, env, policy)
    except StorageError as exc:
        if exc.transient:
            raise TransientError(f"model {uri}: storage unreachable: {exc}") from exc
        raise ModelError(f"model {uri} cannot be read: {exc}") from exc


def _fetch_s3(uri: str, bucket: str, key: str, cache_dir: Path, env: Mapping[str, str],
              policy: RetryPolicy | None) -> Path:
    store = store_from_env(f"s3://{bucket}/", env, policy=policy)
    single = store.stat(key) if key and not key.endswith("/") else None
    if single is not None:
        base, objects = as_prefix(key.rpartition("/")[0]), [single]
    else:
        base = as_prefix(key)
        objects = [o for o in store.list(base) if not o.key.endswith("/")]
    if not objects:
        raise ModelError(f"model {uri} not found: no objects under it")
    wanted = {o.key[len(base):]: o for o in objects}

    def download(folder: Path) -> None:
        _safe_paths(folder, list(wanted), uri)
        log.info("model %s: downloading %d files", uri, len(wanted))
        with ThreadPoolExecutor(FILE_WORKERS) as pool:
            list(pool.map(lambda rel: store.get_file(wanted[rel].key, folder / rel), sorted(wanted)))

    budget = env.get(ENV_CACHE_BUDGET)
    target = cached_objects(cache_dir, uri, {rel: (o.etag, o.size) for rel, o in wanted.items()}, download,
                            int(budget) if budget else None)
    return target / single.key[len(base):] if single is not None else target


def _safe_paths(target: Path, relative: list[str], uri: str) -> None:
    root = target.resolve()
    for rel in relative:
        if not (root / rel).resolve().is_relative_to(root):
            raise ModelError(f"model {uri}: object name {rel!r} is not allowed")


def _fetch_hf(uri: str, repo: str, revision: str, cache_dir: Path, env: Mapping[str, str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        path = snapshot_download(repo_id=repo, revision=revision or None, cache_dir=cache_dir / "hf",
                                 token=env.get(ENV_HF_TOKEN) or None, endpoint=env.get("HF_ENDPOINT") or None)
    except (GatedRepoError, RepositoryNotFoundError) as exc:
        raise ModelError(f"model {uri} not found or not accessible (a gated or private repository needs "
                         f"hfToken in the storage Secret): {type(exc).__name__}") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        # Includes LocalEntryNotFoundError: the hub was unreachable and nothing was cached.
        raise ModelError(f"model {uri} cannot be downloaded from the Hugging Face Hub: "
                         f"{str(exc).splitlines()[0]}") from exc
    return Path(path)

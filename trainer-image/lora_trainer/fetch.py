"""Fetching models (the base model, the tagger) into the node-local cache.

- ``file://``: used in place, nothing is copied.
- ``s3://``: downloaded into an entry of the node's model cache (`model_cache`) keyed by the URI
  and every object's ETag and size, large objects as parallel ranged GETs (`lora_operator.storage`).
  A second fetch of an unchanged model is a listing only; a changed model is a new entry.
- ``hf://org/name[@revision]``: the parts of a diffusers repository the job loads
  (``huggingface_hub.snapshot_download`` with allow patterns: the components of its model_index.json
  less the unused ones, safetensors weights only, no fp16 / bf16 / EMA variants), into ``<cache>/hf``,
  with ``HF_TOKEN`` for gated or private repositories; ``hf://org/name/path/file.safetensors`` that
  one file (``hf_hub_download``). Each fetch logs the files, the bytes transferred and the seconds.

A URI naming one object (``s3://models/x.safetensors``) yields that file; a prefix yields the folder.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
from .model_cache import cached_objects, content_key, record_fetch

log = logging.getLogger(__name__)

FILE_WORKERS = 4
"""Objects downloaded at once (each large one is itself split into parallel ranges)."""
VARIANTS = ["*.fp16.*", "*.fp16-*", "*.bf16.*", "*.bf16-*", "*.ema.*", "*.non_ema.*", "*.fp8.*"]
"""Precision and EMA variants diffusers repositories keep beside the weights a job loads."""
NOT_SAFETENSORS = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.pb"]
"""Weights in formats the trainer never reads (pickles, other frameworks)."""
UNUSED_COMPONENTS = frozenset({"safety_checker", "feature_extractor", "image_encoder"})
"""Pipeline components no family trains with."""


@dataclass(frozen=True)
class HfSelection:
    """Which files of a diffusers repository on the hub a job needs.

    Attributes:
        weights: Download the weights (False: configs, tokenizers and scheduler only: baseModel.config).
        skip: Components of model_index.json left out (a Flux components folder adds the transformer).
    """

    weights: bool = True
    skip: frozenset[str] = field(default=UNUSED_COMPONENTS)


def fetch_model(uri: str, cache_dir: Path, *, env: Mapping[str, str] | None = None,
                policy: RetryPolicy | None = None, revision: str | None = None,
                selection: HfSelection | None = None) -> Path:
    """Make a model available locally and return its path.

    Args:
        uri: ``s3://bucket/prefix/``, ``s3://bucket/file.safetensors``, ``file:///abs/path``
            or ``hf://org/name[@revision]``.
        cache_dir: The node-local cache (``LORA_CACHE_DIR``).
        env: Storage credentials and endpoint, ``HF_TOKEN``, ``HF_ENDPOINT``. Default: os.environ.
        policy: Retry budget for storage. Default: five minutes.
        revision: hf://: the revision when the URI has no @revision. Default: main.
        selection: hf:// folders: the files to download. Default: a base model's.

    Returns:
        The local folder (or file, when the URI names one object).

    Raises:
        ModelError: The URI is malformed, names nothing, or is refused (names the URI).
        TransientError: The storage stayed unreachable for the whole retry budget.
    """
    env = os.environ if env is None else env
    if uri.startswith("hf://"):
        return _fetch_hf(uri, cache_dir, env, revision, selection or HfSelection())
    try:
        scheme, bucket, key = parse_uri(uri)
    except InvalidUri as exc:
        raise ModelError(str(exc)) from exc
    if scheme == "file":
        path = Path(key)
        if not path.exists():
            raise ModelError(f"model {uri} not found: {path} does not exist")
        return path
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
        started = time.monotonic()
        with ThreadPoolExecutor(FILE_WORKERS) as pool:
            list(pool.map(lambda rel: store.get_file(wanted[rel].key, folder / rel), sorted(wanted)))
        log.info("model %s: %d bytes transferred in %.1f s", uri, sum(o.size for o in wanted.values()),
                 time.monotonic() - started)

    budget = env.get(ENV_CACHE_BUDGET)
    target = cached_objects(cache_dir, uri, {rel: (o.etag, o.size) for rel, o in wanted.items()}, download,
                            int(budget) if budget else None)
    return target / single.key[len(base):] if single is not None else target


def _safe_paths(target: Path, relative: list[str], uri: str) -> None:
    root = target.resolve()
    for rel in relative:
        if not (root / rel).resolve().is_relative_to(root):
            raise ModelError(f"model {uri}: object name {rel!r} is not allowed")


def split_hf(uri: str) -> tuple[str, str, str]:
    """``hf://org/name[/path][@revision]`` -> (repository, path in it or "", revision or "").

    Raises:
        ModelError: not a repository id (names the URI).
    """
    rest, _, revision = uri[len("hf://"):].strip("/").partition("@")
    parts = rest.split("/")
    repo, path = ("/".join(parts[:2]), "/".join(parts[2:])) if len(parts) > 1 else (rest, "")
    if not parts[0] or any(not p or p in (".", "..") for p in parts):
        raise ModelError(f"{uri!r}: expected hf://org/name[/file.safetensors][@revision]")
    return repo, path, revision


def _fetch_hf(uri: str, cache_dir: Path, env: Mapping[str, str], revision: str | None,
              selection: HfSelection) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, path, in_uri = split_hf(uri)
    revision = in_uri or revision or None
    common = {"repo_id": repo, "revision": revision, "cache_dir": cache_dir / "hf",
              "token": env.get(ENV_HF_TOKEN) or None, "endpoint": env.get("HF_ENDPOINT") or None}
    blobs = cache_dir / "hf" / f"models--{repo.replace('/', '--')}" / "blobs"
    before, started = _size(blobs), time.monotonic()
    try:
        if path:
            result = Path(hf_hub_download(filename=path, **common))
        else:
            index = json.loads(Path(hf_hub_download(filename="model_index.json", **common)).read_text())
            parts = [name for name, value in index.items() if name not in selection.skip
                     and not name.startswith("_") and isinstance(value, list) and value[0]]  # [library, class]
            ignore = VARIANTS + NOT_SAFETENSORS + ([] if selection.weights else ["*.safetensors"])
            result = Path(snapshot_download(allow_patterns=["model_index.json", *(f"{p}/*" for p in parts)],
                                            ignore_patterns=ignore, **common))
    except (GatedRepoError, RepositoryNotFoundError) as exc:
        raise ModelError(f"model {uri} not found or not accessible (a gated or private repository needs "
                         f"hfToken in the storage Secret): {type(exc).__name__}") from exc
    except RevisionNotFoundError as exc:
        raise ModelError(f"model {uri}: revision {revision!r} not found in {repo}") from exc
    except LocalEntryNotFoundError as exc:  # the hub was unreachable and nothing was cached
        raise ModelError(f"model {uri} cannot be downloaded from the Hugging Face Hub: "
                         f"{str(exc).splitlines()[0]}") from exc
    except EntryNotFoundError as exc:
        missing = path or "model_index.json (not a diffusers folder: name a .safetensors file in it)"
        raise ModelError(f"model {uri}: {missing} not found in {repo} at revision {revision or 'main'}") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelError(f"model {uri} cannot be downloaded from the Hugging Face Hub: "
                         f"{str(exc).splitlines()[0]}") from exc
    files = [result] if result.is_file() else [p for p in result.rglob("*") if p.is_file()]
    transferred, seconds = _size(blobs) - before, time.monotonic() - started
    log.info("model %s: %d files, %d bytes, %d bytes transferred in %.1f s", uri, len(files),
             sum(p.stat().st_size for p in files), transferred, seconds)
    # huggingface_hub's cache (under the cache dir, so on the node's hostPath) keys by the resolved commit:
    # the snapshot folder's name. The manifest reports the fetch like an s3:// one.
    snapshot = result.parts[result.parts.index("snapshots") + 1] if "snapshots" in result.parts else ""
    record_fetch(uri, content_key(uri, {"commit": snapshot, "files": sorted(str(f) for f in files)}),
                 hit=transferred == 0, fetched=transferred, seconds=seconds)
    return result


def _size(folder: Path) -> int:
    """Bytes of the files under `folder` (0 when absent)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0

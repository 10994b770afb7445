"""The node-local model cache: entries keyed by content, filled atomically, evicted least recently used.

Layout under the cache root (``LORA_CACHE_DIR``, a hostPath the chart may give every trainer on a node)::

    models/<key>/          a complete entry: the model's files, never changed once renamed here
    models/<key>.used      touched on every use: the LRU clock
    models/<key>.lock      the entry's lock file
    models/.fill-<key>-*/  an entry being filled; renamed to models/<key>/ once verified

A key is the sha256 of the URI and what pins its content (every object's ETag and size, a hub
revision's commit): a changed model is a new entry, so a reader never sees an entry change under
it, and the old one ages out.

Why a file lock (`filelock`, flock(2) underneath): the cache outlives pods, and a node can run two
trainer processes at once (a retried attempt whose predecessor is still terminating, data-parallel
ranks, a tagger fetch beside the base model). Without it both would download the same entry, and
eviction could delete an entry another process is about to rename or read. The kernel drops a
flock when its process dies, so a killed trainer leaves no stale lock behind, and the ``.fill-*``
folder it left is never taken for an entry (only a rename makes one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from lora_operator.api.reports import ModelFetch

from .errors import TransientError

log = logging.getLogger(__name__)

MODELS = "models"
USED = ".used"
FILL_PREFIX = ".fill-"
LOCK_TIMEOUT = 6 * 3600.0
"""Seconds a process waits for another's fill of the same entry (a large model on a slow link)."""


@dataclass(frozen=True)
class FetchRecord:
    """What one fetch found and moved: for the manifest and the job's status."""

    uri: str
    key: str
    hit: bool
    bytes: int
    """Bytes downloaded (0 on a hit)."""
    seconds: float


FETCHED: list[FetchRecord] = []
"""Every fetch of this process, in order: a trainer runs one job, and its manifest reports them."""


def reported() -> list[ModelFetch]:
    """This process's fetches, as the manifest reports them."""
    return [ModelFetch(uri=r.uri, key=r.key, hit=r.hit, bytes=r.bytes, seconds=round(r.seconds, 3))
            for r in FETCHED]


def record_fetch(uri: str, key: str, *, hit: bool, fetched: int, seconds: float) -> FetchRecord:
    """Add a fetch made outside `ModelCache` (hf://, through huggingface_hub's own cache) to this process's
    record (`reported`)."""
    record = FetchRecord(uri, key, hit, fetched, seconds)
    FETCHED.append(record)
    return record


def content_key(uri: str, pins: Mapping[str, object]) -> str:
    """The entry key of `uri` whose content `pins` fix (ETags and sizes per file, a revision's commit)."""
    canonical = json.dumps({"uri": uri, "pins": pins}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


class ModelCache:
    """Entries under ``<root>/models``, within `budget_bytes` (None: no limit)."""

    def __init__(self, root: Path, budget_bytes: int | None = None):
        self.models = root / MODELS
        self.budget_bytes = budget_bytes

    def entry(self, key: str) -> Path:
        return self.models / key

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        from filelock import FileLock  # here: `lora-train upload` on a laptop imports this module, never locks

        self.models.mkdir(parents=True, exist_ok=True)
        with FileLock(self.models / f"{key}.lock", timeout=LOCK_TIMEOUT):
            yield

    def get(self, uri: str, key: str, fill: Callable[[Path], None],
            verify: Callable[[Path], None] | None = None) -> tuple[Path, FetchRecord]:
        """The entry `key`, filled by ``fill(folder)`` when it is missing.

        Args:
            uri: The model's URI (for the record and logs).
            key: `content_key` of the URI and its pins.
            fill: Downloads the model into the empty folder it is given.
            verify: Raises when a filled folder is not the model (sizes, checksums); the folder is
                then discarded and nothing is cached.

        Returns:
            The entry's folder and what this call fetched.
        """
        started = time.monotonic()
        with self._lock(key):
            target = self.entry(key)
            if target.is_dir():
                self._touch(key)
                record = FetchRecord(uri, key, True, 0, time.monotonic() - started)
                FETCHED.append(record)
                return target, record
            for stale in self.models.glob(f"{FILL_PREFIX}{key}-*"):
                shutil.rmtree(stale, ignore_errors=True)  # a fill whose process died: we hold its lock
            filling = self.models / f"{FILL_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
            filling.mkdir(parents=True)
            try:
                fill(filling)
                if verify is not None:
                    verify(filling)
                fetched = folder_bytes(filling)
                os.rename(filling, target)  # atomic: readers see no entry or the whole one
            finally:
                shutil.rmtree(filling, ignore_errors=True)
            self._touch(key)
        record = FetchRecord(uri, key, False, fetched, time.monotonic() - started)
        FETCHED.append(record)
        log.info("model %s: cached %d bytes in %.1fs as %s", uri, fetched, record.seconds, key)
        self.evict(keep=key)
        return target, record

    def _touch(self, key: str) -> None:
        (self.models / f"{key}{USED}").touch()

    def entries(self) -> list[tuple[float, str, int]]:
        """(last use, key, bytes) of every complete entry, least recently used first."""
        found = []
        for path in self.models.iterdir() if self.models.is_dir() else ():
            if not path.is_dir() or path.name.startswith(FILL_PREFIX):
                continue
            used = self.models / f"{path.name}{USED}"
            when = used.stat().st_mtime if used.exists() else path.stat().st_mtime
            found.append((when, path.name, folder_bytes(path)))
        return sorted(found)

    def evict(self, keep: str | None = None) -> list[str]:
        """Deletes least-recently-used entries until the rest fit the budget; returns their keys.

        An entry another process holds (filling it, or checking it before a read) is skipped, as is
        `keep`, the one just fetched: eviction never takes what is about to be read.
        """
        if self.budget_bytes is None:
            return []
        from filelock import FileLock, Timeout

        entries = self.entries()
        total = sum(size for _, _, size in entries)
        evicted = []
        for _, key, size in entries:
            if total <= self.budget_bytes:
                break
            if key == keep:
                continue
            try:
                with FileLock(self.models / f"{key}.lock", timeout=0):
                    # rename first: a reader that checks after this sees no entry, never half of one
                    doomed = self.models / f"{FILL_PREFIX}evict-{key}-{uuid.uuid4().hex[:8]}"
                    os.rename(self.entry(key), doomed)
                    with contextlib.suppress(FileNotFoundError):
                        (self.models / f"{key}{USED}").unlink()
            except Timeout:
                continue
            shutil.rmtree(doomed, ignore_errors=True)
            total -= size
            evicted.append(key)
            log.info("model cache: evicted %s (%d bytes) to stay within %d bytes", key, size, self.budget_bytes)
        return evicted


def cached_objects(cache_dir: Path, uri: str, objects: Mapping[str, tuple[str, int]],
                   download: Callable[[Path], None], budget_bytes: int | None) -> Path:
    """The folder of a storage model whose files (relative name -> (ETag, size)) `download` writes
    into the folder it is given; the files' sizes are checked before the entry is published."""
    def verify(folder: Path) -> None:
        for rel, (_, size) in objects.items():
            path = folder / rel
            if not path.is_file() or path.stat().st_size != size:
                raise TransientError(f"model {uri}: {rel} was not downloaded whole; the next attempt fetches it again")

    pins = {rel: [etag, size] for rel, (etag, size) in objects.items()}
    folder, _ = ModelCache(cache_dir, budget_bytes).get(uri, content_key(uri, pins), download, verify)
    return folder

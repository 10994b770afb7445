"""What the operator reads from and writes to object storage: dataset checks, the trainer's
progress and manifest, and finalizing the selected checkpoint. The trainer pod has no
Kubernetes credentials, so storage is the only channel from it to the resource."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from pydantic import ValidationError

from .api import JobSpec, JobStatus
from .api.reports import (
    CHECKPOINTS_PREFIX,
    FINAL_PREFIX,
    MANIFEST_KEY,
    PROGRESS_KEY,
    Manifest,
    ProgressReport,
)
from .api.status import MAX_SKIPPED_SHOWN, CheckpointRecord, JobOutput, PreviewRecord, Progress
from .config import OperatorConfig
from .render import output_prefix
from .storage import ObjectStore, StorageError, open_store
from .storage.retry import RetryPolicy

log = logging.getLogger(__name__)

QUICK = RetryPolicy(total_seconds=5.0)
"""Operator reads must not stall a handler for minutes: a short budget, then try next tick."""


@dataclass(frozen=True)
class Reports:
    progress: ProgressReport | None
    manifest: Manifest | None


def open_for(uri: str, spec: JobSpec, config: OperatorConfig, *, quick: bool = True) -> ObjectStore:
    """The store at `uri` with the operator's own credentials and the job's endpoint."""
    storage = spec.storage
    endpoint = (storage.endpoint if storage and storage.endpoint else None) or config.storage_endpoint or None
    secure = storage.secure if storage and storage.secure is not None else config.storage_secure
    return open_store(uri, endpoint=endpoint, access_key=config.storage_access_key,
                      secret_key=config.storage_secret_key, secure=secure, policy=QUICK if quick else None)


def dataset_is_empty(spec: JobSpec, config: OperatorConfig) -> bool:
    """True when the dataset prefix holds no object at all (an s3:// prefix the operator can list)."""
    uri = spec.dataset.uri if spec.dataset else None
    if not uri or not uri.startswith("s3://"):
        return False
    return not open_for(uri, spec, config).list("")


def read_reports(spec: JobSpec, namespace: str, name: str, config: OperatorConfig) -> Reports:
    """progress.json and manifest.json of a job; None for each that is missing or unreadable."""
    prefix = output_prefix(spec, namespace, name)
    if not prefix.startswith("s3://"):
        return Reports(None, None)
    store = open_for(prefix, spec, config)
    return Reports(_load(store, PROGRESS_KEY, ProgressReport), _load(store, MANIFEST_KEY, Manifest))


def _load(store: ObjectStore, key: str, model):
    try:
        data = store.get_bytes(key)
        return model.model_validate(json.loads(data)) if data else None
    except (StorageError, ValueError, ValidationError) as err:
        log.info("cannot read %s: %s", store.uri_of(key), err)
        return None


def apply_reports(status: JobStatus, reports: Reports, prefix: str) -> JobStatus:
    """Status with the trainer's progress, checkpoints and previews (URIs made absolute)."""
    update: dict = {}
    if reports.progress:
        p = reports.progress
        percent = int(100 * p.step / p.total_steps) if p.total_steps else 0
        update["progress"] = Progress(
            step=p.step, total_steps=p.total_steps, plan=p.plan, epoch=p.epoch, total_epochs=p.total_epochs,
            loss=p.loss,
            steps_per_second=p.steps_per_second, eta_seconds=p.eta_seconds, percent=min(percent, 100),
            updated_at=p.updated_at)
    if reports.manifest:
        m = reports.manifest
        update["checkpoints"] = [CheckpointRecord(
            name=c.name, epoch=c.epoch, step=c.step, uri=prefix + c.path, format=c.format, size_bytes=c.size_bytes,
            sha256=c.sha256, validation_loss=c.validation_loss) for c in m.checkpoints]
        update["previews"] = [PreviewRecord(
            epoch=p.epoch, prompt=p.prompt, uris=[prefix + u for u in p.paths],
            grid=prefix + p.grid if p.grid else None) for p in m.previews]
        update["skipped_files"] = m.skipped[:MAX_SKIPPED_SHOWN]
    return status.model_copy(update=update) if update else status


def finalize(spec: JobSpec, namespace: str, name: str, checkpoint: str, config: OperatorConfig) -> JobOutput:
    """Copies checkpoints/<checkpoint>/ to final/ (replacing what was there) and returns the output record.

    With checkpoints.deleteUnselected the other checkpoints are deleted afterwards.

    Raises:
        StorageError: the checkpoint does not exist or storage failed.
    """
    prefix = output_prefix(spec, namespace, name)
    store = open_for(prefix, spec, config, quick=False)
    source = f"{CHECKPOINTS_PREFIX}{checkpoint}/"
    objects = store.list(source)
    if not objects:
        raise StorageError(f"checkpoint {checkpoint} not found", uri=prefix + source)
    for old in store.list(FINAL_PREFIX):
        store.delete(old.key)
    for obj in objects:
        store.copy(obj.key, FINAL_PREFIX + obj.key[len(source):])
    if spec.checkpoints and spec.checkpoints.delete_unselected:
        for obj in store.list(CHECKPOINTS_PREFIX):
            if not obj.key.startswith(source):
                store.delete(obj.key)
    return JobOutput(checkpoint=checkpoint, uri=prefix + FINAL_PREFIX, prefix=prefix)

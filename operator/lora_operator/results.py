"""What the operator reads from and writes to object storage: dataset checks, the trainer's
progress and manifest, and finalizing the selected checkpoint. The trainer pod has no
Kubernetes credentials, so storage is the only channel from it to the resource.

Every store here is opened by the caller with the job's own Secret (`job_storage`), at the
job's own prefix (`contract.output_prefix`, which holds the job's UID); files another job wrote
are ignored all the same."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from pydantic import ValidationError

from .api import JobStatus
from .api.contract import FINAL_PREFIX, MANIFEST_KEY, PROGRESS_KEY, checkpoint_key
from .api.reports import Manifest, ProgressReport
from .api.status import MAX_SKIPPED_SHOWN, CheckpointRecord, JobOutput, PreviewRecord, Progress
from .storage import ObjectStore, StorageError

log = logging.getLogger(__name__)


ManifestVersion = tuple[int, int]
"""(attempt, manifest writes) of a progress report: see `manifest_version`."""


@dataclass(frozen=True)
class Reports:
    progress: ProgressReport | None
    manifest: Manifest | None
    version: ManifestVersion | None = field(default=None, compare=False)
    """The manifest version (`manifest_version`) a status with these reports applied is up to date
    with; None when that is not known (the progress does not count its manifest writes, the
    manifest could not be read): the next read reads the manifest again."""
NO_PROGRESS: ManifestVersion = (0, -1)
"""The version while the job's prefix holds no progress of its own: the trainer writes progress.json
before its first manifest.json, so the manifest read then stays current until a progress appears."""


def manifest_version(progress: ProgressReport | None) -> ManifestVersion | None:
    """Which manifest.json the trainer had written when it wrote `progress`: the manifest read after
    a progress of the same version is still the current one. None when the progress does not count
    its manifest writes (a trainer older than `ProgressReport.manifest_writes`)."""
    if progress is None:
        return NO_PROGRESS
    if progress.manifest_writes is None:
        return None
    return progress.attempt, progress.manifest_writes


def dataset_is_empty(store: ObjectStore) -> bool:
    """True when the prefix `store` opens (with the job's Secret) holds no object at all."""
    return not store.list("")


def read_reports(store: ObjectStore, job_uid: str, seen: ManifestVersion | None = None) -> Reports:
    """progress.json and manifest.json of a job's prefix; None for each that is missing, unreadable
    or written by another job (its recorded UID is not `job_uid`).

    `seen`: the version (`manifest_version`) of the manifest the job's status already holds. When
    the progress shows that version still, the manifest is not read (None): a running job's follow
    reads it only after the trainer wrote it again, not every interval."""
    progress = _load(store, PROGRESS_KEY, ProgressReport, job_uid)
    version = manifest_version(progress)
    if seen is not None and version == seen:
        return Reports(progress, None, version)
    manifest, read = _read(store, MANIFEST_KEY, Manifest, job_uid)
    return Reports(progress, manifest, version if read else None)


def _load(store: ObjectStore, key: str, model, job_uid: str):
    return _read(store, key, model, job_uid)[0]


def _read(store: ObjectStore, key: str, model, job_uid: str):
    """(the report or None, whether the object was read: False when storage failed or it did not
    parse, True when it is missing or another job's)."""
    try:
        data = store.get_bytes(key)
        report = model.model_validate(json.loads(data)) if data else None
    except StorageError as err:
        if err.denied:
            raise
        log.info("cannot read %s: %s", store.uri_of(key), err)
        return None, False
    except (ValueError, ValidationError) as err:
        log.info("cannot read %s: %s", store.uri_of(key), err)
        return None, False
    if report is not None and report.job_uid != job_uid:
        log.warning("%s was written by job %s, not %s: ignored", store.uri_of(key), report.job_uid, job_uid)
        return None, True
    return report, True


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
            updated_at=p.updated_at,
            # an attempt that has not saved yet keeps the earlier attempts' measure
            state_save_seconds=p.state_save_seconds if p.state_save_seconds is not None else (
                status.progress.state_save_seconds if status.progress else None))
    if reports.manifest:
        m = reports.manifest
        update["checkpoints"] = [CheckpointRecord(
            name=c.name, epoch=c.epoch, step=c.step, uri=prefix + c.path, format=c.format, size_bytes=c.size_bytes,
            sha256=c.sha256, validation_loss=c.validation_loss) for c in m.checkpoints]
        update["previews"] = [PreviewRecord(
            epoch=p.epoch, step=p.step, prompt=p.prompt, uris=[prefix + u for u in p.paths],
            grid=prefix + p.grid if p.grid else None) for p in m.previews]
        update["skipped_files"] = m.skipped[:MAX_SKIPPED_SHOWN]
        if m.models:
            update["models"], update["cached_on"] = m.models[:16], m.node_name
    return status.model_copy(update=update) if update else status


def finalize(store: ObjectStore, job_uid: str, checkpoint: str) -> JobOutput:
    """Copies checkpoints/<checkpoint>/ to final/ (replacing what was there) and returns the output record.

    Only a checkpoint the job's own manifest lists is copied: the manifest must carry the job's UID.

    Args:
        store: The job's output prefix, opened with the job's Secret.
        job_uid: metadata.uid of the job.
        checkpoint: The selected checkpoint's name.

    Raises:
        StorageError: the checkpoint is not the job's, does not exist, or storage failed.
    """
    prefix = store.uri
    manifest = _load(store, MANIFEST_KEY, Manifest, job_uid)
    if manifest is None or checkpoint not in {c.name for c in manifest.checkpoints}:
        raise StorageError(f"checkpoint {checkpoint} is not in this job's manifest", uri=prefix + MANIFEST_KEY)
    source = checkpoint_key(checkpoint) + "/"
    objects = store.list(source)
    if not objects:
        raise StorageError(f"checkpoint {checkpoint} not found", uri=prefix + source)
    for old in store.list(FINAL_PREFIX):
        store.delete(old.key)
    for obj in objects:
        store.copy(obj.key, FINAL_PREFIX + obj.key[len(source):])
    return JobOutput(checkpoint=checkpoint, uri=prefix + FINAL_PREFIX, prefix=prefix)


def delete_checkpoints(store: ObjectStore, checkpoints: list[str]) -> int:
    """Deletes checkpoints/<name>/ of each of `checkpoints` (spec.deleteUnselected); returns the
    objects deleted. Names only: a checkpoint's prefix is checkpoints/<name>/ and nothing above it.

    Raises:
        StorageError: storage failed (what was deleted stays deleted; a retry deletes the rest).
    """
    deleted = 0
    for checkpoint in checkpoints:
        for obj in store.list(checkpoint_key(checkpoint) + "/"):
            store.delete(obj.key)
            deleted += 1
    return deleted

"""Inputs that must exist before a job may take a GPU node: its s3:// base model, tagger model
and regularization images (the dataset has its own check in lifecycle). Without this a
missing model is found by the trainer, after the job held a whole node for its start-up.

A prefix that holds no object fails the job; a store that cannot be listed right now does
not (the trainer then reports it with its own clear error). Passes are remembered for a
moment (`Confirmed`), so a burst of jobs on one model lists it once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

from .api import JobSpec, Reason
from .confirmed import Confirmed
from .policy import uris_of
from .results import dataset_is_empty
from .storage import ObjectNotFound, ObjectStore, StorageError

log = logging.getLogger(__name__)


CHECKED: dict[str, Reason] = {
    "baseModel.uri": Reason.MODEL_NOT_FOUND,
    "dataset.autoCaption.model": Reason.MODEL_NOT_FOUND,
    "dataset.regularization.uri": Reason.DATASET_EMPTY,
}
"""The inputs checked here, each with the reason a job fails with when nothing is there."""


def missing_input(spec: JobSpec, open_store: Callable[[str], ObjectStore], access: Hashable,
                  confirmed: Confirmed) -> tuple[Reason, str] | None:
    """The first s3:// input of a resolved spec that holds nothing: (reason, message naming the field).

    Args:
        spec: The resolved spec.
        open_store: Opens a URI with the job's own Secret (`job_storage.JobStorage.open`).
        access: The endpoint and key `open_store` uses: a pass is remembered for that identity only.
        confirmed: Checks that passed a moment ago.
    """
    for field, uri in uris_of(spec):
        key = ("input", access, uri)
        if field not in CHECKED or not uri.startswith("s3://") or key in confirmed:
            continue
        reason = CHECKED[field]
        try:
            if dataset_is_empty(open_store(uri)) and not _names_an_object(open_store, uri):
                return reason, f"spec.{field}: nothing under {uri}"
        except ObjectNotFound as err:
            return reason, f"spec.{field}: {uri}: {err}"
        except StorageError as err:
            if err.denied:
                return Reason.STORAGE_ACCESS_DENIED, f"spec.{field}: {err} (with the job's storage Secret)"
            log.warning("cannot list spec.%s %s yet: %s", field, uri, err)
            continue
        confirmed.add(key)
    return None


def _names_an_object(open_store: Callable[[str], ObjectStore], uri: str) -> bool:
    """Whether `uri` names one object: a single-file checkpoint (s3://models/x.safetensors; the trainer reads
    no other single-file format), which a listing of the prefix ``x.safetensors/`` does not see."""
    parent, _, name = uri.rpartition("/")
    return name.endswith(".safetensors") and open_store(parent + "/").stat(name) is not None

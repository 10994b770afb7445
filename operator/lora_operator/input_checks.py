"""Inputs that must exist before a job may take a GPU node: its s3:// dataset, base model, tagger
model and regularization images. Without this a missing model is found by the trainer, after the
job held a whole node for its start-up.

A prefix that holds no object fails the job. A store that cannot be listed right now does not:
resolve goes on (the trainer then reports it with its own clear error), while a Kueue attempt's
admission gate stays closed until the dataset can be listed. Passes are remembered for a moment
(`Confirmed`), so a burst of jobs on one model lists it once.
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


DATASET = "dataset.uri"
"""The dataset: a prefix of images, checked on its own (first at resolve, again at a Kueue attempt's gate)."""

CHECKED: dict[str, Reason] = {
    "baseModel.uri": Reason.MODEL_NOT_FOUND,
    "dataset.autoCaption.model": Reason.MODEL_NOT_FOUND,
    "dataset.regularization.uri": Reason.DATASET_EMPTY,
}
"""The inputs `missing_input` checks, each with the reason a job fails with when nothing is there; any
of them may name one .safetensors object instead of a prefix."""

REASONS: dict[str, Reason] = {DATASET: Reason.DATASET_EMPTY, **CHECKED}


def check_input(field: str, uri: str, open_store: Callable[[str], ObjectStore], access: Hashable,
                confirmed: Confirmed, secret: str) -> tuple[Reason, str] | str | None:
    """Whether the input `uri` of spec.`field` (a key of `REASONS`) holds something.

    Args:
        field: The field, in the resource's spelling.
        uri: Its URI; only s3:// ones are checked.
        open_store: Opens a URI with the job's own Secret (`job_storage.JobStorage.open`).
        access: The endpoint and key `open_store` uses: a pass is remembered for that identity only.
        confirmed: Checks that passed a moment ago.
        secret: The job's storage Secret as namespace/name, named when its keys may not read `uri`.

    Returns:
        None when it holds something (or is not in S3, or passed a moment ago); (reason, message
        naming the field and the URI) when it holds nothing, does not exist, or may not be read with
        the Secret's keys; the storage error's text when storage could not answer now (the caller
        decides whether to wait).
    """
    key = ("input", access, uri)
    if not uri.startswith("s3://") or key in confirmed:
        return None
    reason = REASONS[field]
    try:
        if dataset_is_empty(open_store(uri)) and not (field in CHECKED and _names_an_object(open_store, uri)):
            return reason, f"spec.{field}: nothing under {uri}"
    except ObjectNotFound as err:
        return reason, f"spec.{field}: {uri}: {err}"  # err says that it does not exist
    except StorageError as err:
        if err.denied:
            return Reason.STORAGE_ACCESS_DENIED, f"spec.{field}: {err} (with the keys of Secret {secret})"
        return str(err)
    confirmed.add(key)
    return None


def missing_input(spec: JobSpec, open_store: Callable[[str], ObjectStore], access: Hashable,
                  confirmed: Confirmed, secret: str) -> tuple[Reason, str] | None:
    """The first of the `CHECKED` s3:// inputs of a resolved spec that holds nothing: (reason, message
    naming the field). One storage cannot list right now is logged and passes (see `check_input` for
    the arguments)."""
    for field, uri in uris_of(spec):
        if field not in CHECKED:
            continue
        checked = check_input(field, uri, open_store, access, confirmed, secret)
        if isinstance(checked, str):
            log.warning("cannot list spec.%s %s yet: %s", field, uri, checked)
        elif checked is not None:
            return checked
    return None


def _names_an_object(open_store: Callable[[str], ObjectStore], uri: str) -> bool:
    """Whether `uri` names one object: a single-file checkpoint (s3://models/x.safetensors; the trainer reads
    no other single-file format), which a listing of the prefix ``x.safetensors/`` does not see."""
    parent, _, name = uri.rpartition("/")
    return name.endswith(".safetensors") and open_store(parent + "/").stat(name) is not None

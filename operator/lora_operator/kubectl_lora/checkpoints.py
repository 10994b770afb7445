"""Which checkpoint: the best by validation loss, and the one ``pull`` downloads."""

from __future__ import annotations

from ..api.status import CheckpointRecord, JobStatus
from ..selection import best_checkpoint, checkpoint_names
from .errors import CliError

__all__ = ["PREFERRED_FORMATS", "best_checkpoint", "checkpoint_names", "choose_record", "default_checkpoint"]

PREFERRED_FORMATS = ("kohya", "embedding", "diffusers")
"""The format ``pull`` takes when none is asked for: a single file before a folder."""


def default_checkpoint(status: JobStatus, selected: str | None) -> str:
    """The checkpoint ``pull`` takes without --checkpoint: the selected one, else the last.

    Raises:
        CliError: The job has no checkpoints yet.
    """
    names = checkpoint_names(status.checkpoints)
    if not names:
        raise CliError("the job has no checkpoints yet")
    for candidate in (selected, status.output.checkpoint if status.output else None):
        if candidate in names:
            return candidate
    return names[-1]


def choose_record(status: JobStatus, name: str, fmt: str | None) -> CheckpointRecord:
    """The record of checkpoint ``name`` in format ``fmt`` (default: kohya, then embedding, then diffusers).

    Raises:
        CliError: No such checkpoint, or not in that format; the message lists what exists.
    """
    records = [r for r in status.checkpoints if r.name == name]
    if not records:
        known = ", ".join(checkpoint_names(status.checkpoints)) or "none"
        raise CliError(f"no checkpoint {name!r} (checkpoints: {known})")
    formats = {r.format: r for r in records}
    if fmt is not None:
        if fmt not in formats:
            raise CliError(f"checkpoint {name} has no {fmt} format (formats: {', '.join(sorted(formats))})")
        return formats[fmt]
    return next((formats[f] for f in PREFERRED_FORMATS if f in formats), records[0])

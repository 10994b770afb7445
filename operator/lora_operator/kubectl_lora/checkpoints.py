"""Which checkpoint: the best by validation loss, and the one ``pull`` downloads."""

from __future__ import annotations

from collections.abc import Sequence

from ..api.status import CheckpointRecord, JobStatus
from .errors import CliError

PREFERRED_FORMATS = ("kohya", "embedding", "diffusers")
"""The format ``pull`` takes when none is asked for: a single file before a folder."""


def checkpoint_names(checkpoints: Sequence[CheckpointRecord]) -> list[str]:
    """Distinct checkpoint names, oldest epoch first."""
    names: dict[str, int] = {}
    for record in checkpoints:
        names.setdefault(record.name, record.epoch)
    return sorted(names, key=lambda n: (names[n], n))


def best_checkpoint(checkpoints: Sequence[CheckpointRecord]) -> str | None:
    """The name with the lowest validation loss (the earliest on a tie); None when no loss is known."""
    scored = [r for r in checkpoints if r.validation_loss is not None]
    if not scored:
        return None
    return min(scored, key=lambda r: (r.validation_loss, r.epoch)).name


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

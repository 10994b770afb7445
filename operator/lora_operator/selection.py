"""Which checkpoint a finished job keeps: spec.selectedCheckpoint (a name, or auto) and
spec.deleteUnselected, decided from the job's status alone. Pure: the operator's lifecycle
carries the decision out in storage, the controller asks whether one is pending, and
kubectl lora marks the best checkpoint with the same rule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .api.status import CheckpointRecord

AUTO = "auto"
"""selectedCheckpoint: auto picks the checkpoint with the lowest validation loss."""
AUTO_PREFIX = "auto: "
"""How status.output.selection starts when auto made the pick."""


def checkpoint_names(checkpoints: Sequence[CheckpointRecord]) -> list[str]:
    """Distinct checkpoint names, oldest first (by step: epoch-NNNN and step-NNNNNNNN interleave)."""
    names: dict[str, int] = {}
    for record in checkpoints:
        names.setdefault(record.name, record.step)
    return sorted(names, key=lambda n: (names[n], n))


def best_checkpoint(checkpoints: Sequence[CheckpointRecord]) -> str | None:
    """The name with the lowest validation loss (the earliest on a tie); None when no loss is known."""
    scored = [r for r in checkpoints if r.validation_loss is not None]
    if not scored:
        return None
    return min(scored, key=lambda r: (r.validation_loss, r.step)).name


@dataclass(frozen=True)
class Choice:
    """The checkpoint to keep and why, as status.output.selection says it."""

    name: str
    why: str


def choose(selected: str, checkpoints: Sequence[CheckpointRecord]) -> Choice:
    """The checkpoint ``selected`` means: the name itself, or auto's pick.

    auto takes the lowest validation loss; with no loss recorded (no validation images) it takes
    the last checkpoint and says so.

    Raises:
        ValueError: auto, and the job has no checkpoint at all; or a name the job's checkpoints
            do not hold (with none listed, storage is asked: the status may not have them).
    """
    names = checkpoint_names(checkpoints)
    if selected != AUTO:
        if names and selected not in names:
            raise ValueError(f"spec.selectedCheckpoint: no checkpoint {selected} (checkpoints: {', '.join(names)})")
        return Choice(selected, f"{selected}: named by spec.selectedCheckpoint")
    best = best_checkpoint(checkpoints)
    if best is not None:
        loss = min(r.validation_loss for r in checkpoints if r.name == best and r.validation_loss is not None)
        return Choice(best, f"{AUTO_PREFIX}{best} has the lowest validation loss ({loss:.4f})")
    if not names:
        raise ValueError("spec.selectedCheckpoint: auto: the job has no checkpoints to pick from")
    return Choice(names[-1], f"{AUTO_PREFIX}{names[-1]} is the last checkpoint (no validation loss was recorded)")


def unselected(checkpoints: Sequence[CheckpointRecord], keep: str) -> list[str]:
    """Names of the checkpoints other than ``keep``, oldest first."""
    return [n for n in checkpoint_names(checkpoints) if n != keep]


def selection_pending(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether a finished job's selectedCheckpoint or deleteUnselected is not carried out yet
    (from the resource's dicts: the controller asks this of every finished job)."""
    selected = spec.get("selectedCheckpoint")
    if not selected:
        return False
    output = status.get("output") or {}
    picked = output.get("checkpoint")
    if not picked:
        return True
    if selected == AUTO:
        if not str(output.get("selection") or "").startswith(AUTO_PREFIX):
            return True
    elif selected != picked:
        return True
    names = {c.get("name") for c in status.get("checkpoints") or ()}
    return bool(spec.get("deleteUnselected")) and bool(names - {picked})

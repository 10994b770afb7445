"""The conditions of a job's status: how one is found, set and read, and the phase they sum up to.

Conditions follow Kubernetes conventions: `lastTransitionTime` moves only when a condition's
status flips, reason/message/observedGeneration follow the latest event, and `phase` is only
their summary (`derive_phase`). The transitions (`status_transitions`) are built on these.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from .api import Condition, ConditionType, JobStatus, Phase, Reason

CANCELLED = Reason.CANCELLED
"""Reason of the Failed condition of a cancelled job (phase Cancelled). Not yet in api.Reason."""

C = ConditionType


def rfc3339(moment: datetime) -> str:
    """A timestamp as Kubernetes writes it: UTC, seconds, ``Z``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    """The condition of `type_`, or None."""
    return next((c for c in conditions if c.type == type_), None)


def is_true(status: JobStatus, type_: str) -> bool:
    """Whether the condition `type_` is present with status True."""
    condition = find_condition(status.conditions, type_)
    return condition is not None and condition.status == "True"


def set_condition(
    conditions: list[Condition],
    type_: str,
    value: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> list[Condition]:
    """A copy of `conditions` with `type_` set; lastTransitionTime moves only on a flip."""
    status = "True" if value else "False"
    old = find_condition(conditions, type_)
    changed = old is None or old.status != status
    new = Condition(
        type=type_,
        status=status,
        reason=str(reason),
        message=message,
        last_transition_time=rfc3339(now) if changed else old.last_transition_time,
        observed_generation=generation if generation is not None else (old.observed_generation if old else None),
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def derive_phase(conditions: Iterable[Condition]) -> Phase:
    """The printer-column summary of the conditions.

    Succeeded > Failed (Cancelled when its reason says so) > Suspended > Running (Admitted
    True: the job holds a node, its pod starting or running) > Queued (Admitted False) >
    Pending (nothing decided yet).
    """
    by_type = {c.type: c for c in conditions}

    def true(type_: str) -> bool:
        return type_ in by_type and by_type[type_].status == "True"

    if true(C.SUCCEEDED):
        return Phase.SUCCEEDED
    if true(C.FAILED):
        return Phase.CANCELLED if by_type[C.FAILED].reason == CANCELLED else Phase.FAILED
    if true(C.SUSPENDED):
        return Phase.SUSPENDED
    if true(C.ADMITTED) or true(C.RUNNING):
        return Phase.RUNNING
    if C.ADMITTED in by_type:
        return Phase.QUEUED
    return Phase.PENDING

"""Pure transitions of a job's status: (status, event) -> new status.

Conditions are the truth and follow Kubernetes conventions: `lastTransitionTime` moves only
when a condition's status flips, reason/message/observedGeneration follow the latest event.
`phase` is always recomputed from the conditions by `derive_phase`. Every function returns
a new JobStatus and leaves its input alone; a job that has finished stays finished.

Typical life: queued -> admitted -> pod_running -> attempt_ended (requeue, with backoff or
not) -> admitted -> ... -> succeeded / failed. suspended / resumed / cancelled may come at
any time before the end.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from .api import FINISHED_PHASES, Attempt, ConditionType, JobStatus, Phase, Reason
from .kueue import MIRROR_PREFIX, KueuePlace, WorkloadState
from .outcome import Action, ActionKind, Outcome
from .status_conditions import CANCELLED, derive_phase, find_condition, is_true, rfc3339, set_condition

C = ConditionType

__all__ = [  # the condition helpers too: callers read them as `status_transitions.<name>`
    "CANCELLED", "admitted", "attempt_ended", "cancelled", "deferred", "derive_phase", "failed", "find_condition",
    "is_true", "kueue_workload", "mirror_workload", "pod_running", "queued", "resumed", "rfc3339", "set_condition",
    "succeeded", "suspended", "waiting_for_node",
]


def _apply(
    status: JobStatus,
    now: datetime,
    generation: int | None,
    conditions: Iterable[tuple[str, bool, str, str]] = (),
    **fields: Any,
) -> JobStatus:
    """Set conditions and fields, then recompute phase and observedGeneration."""
    updated = status.conditions
    for type_, value, reason, message in conditions:
        updated = set_condition(updated, type_, value, reason, message, now, generation)
    if generation is not None:
        fields["observed_generation"] = generation
    return _copied(status, {**fields, "conditions": updated, "phase": derive_phase(updated)})


def _copied(status: JobStatus, update: Mapping[str, Any]) -> JobStatus:
    """`status.model_copy(update=update, deep=True)` that shares the resolved spec instead of copying it.

    The resolved spec is written once, at resolve, and never changed in place after (a new one is a
    new dict); deep-copying its nested dicts on every transition was a sixth of the CPU of a claim
    and of a finished pod's reconcile (bench/reconcile_cost.py, bench/RESULTS.md)."""
    kept = status.resolved_spec
    copied = copy.deepcopy(status, {} if kept is None else {id(kept): kept})
    return copied.model_copy(update=dict(update))


def _finished(status: JobStatus) -> bool:
    return derive_phase(status.conditions) in FINISHED_PHASES


def queued(status: JobStatus, *, position: int | None, now: datetime, generation: int | None = None) -> JobStatus:
    """The job waits for a node at `position` (1-based; None when unknown).

    A job that is already waiting keeps its Admitted reason (Queued, Backoff, Disrupted...):
    only queuePosition moves, so a scheduling pass does not churn the conditions.
    """
    if _finished(status) or is_true(status, C.SUSPENDED):
        return status
    admitted_ = find_condition(status.conditions, C.ADMITTED)
    conditions = []
    if admitted_ is None or admitted_.status == "True":
        conditions.append((C.ADMITTED, False, Reason.QUEUED, "waiting for a free GPU node"))
    fields: dict[str, Any] = {"queue_position": position}
    resolved = find_condition(status.conditions, C.RESOLVED)
    if resolved is not None and resolved.status == "False":  # a deferred check passed at last
        conditions.append((C.RESOLVED, True, Reason.QUEUED, "the checks passed"))
        fields["message"] = "spec resolved; waiting for a free GPU node"
    return _apply(status, now, generation, conditions, **fields)


def mirror_workload(status: JobStatus, state: WorkloadState) -> JobStatus:
    """The Workload's conditions as ``Kueue<type>`` on the status (replacing the previous mirror, so a
    condition Kueue dropped goes too); nothing else changes."""
    kept = [c for c in status.conditions if not c.type.startswith(MIRROR_PREFIX)]
    # Kueue's own lastTransitionTime comes with each condition
    return _copied(status, {"conditions": [*kept, *state.conditions]})


def kueue_workload(status: JobStatus, state: WorkloadState, *, now: datetime,
                   place: KueuePlace | None = None) -> JobStatus:
    """What the attempt's Kueue Workload says, on the job's status.

    Its conditions are mirrored as ``Kueue<type>`` (replacing the previous mirror, so a
    condition Kueue dropped goes too). While Kueue holds the Job (no quota yet, or evicted and
    requeued) the job is Queued: Admitted False with Kueue's reason and message, and queuePosition
    Kueue's `place` (unset when unknown), which the message names as Kueue's. Once Kueue admitted
    it, Admitted is the pod start's to set (`admitted`), not this mirror's.
    """
    if _finished(status) or is_true(status, C.SUSPENDED):
        return status
    status = mirror_workload(status, state)
    if state.phase is not Phase.QUEUED:
        return _apply(status, now, None)
    message = f"Kueue: {state.message}" if state.message else f"Kueue: {state.reason}"
    return _apply(status, now, None, [(C.ADMITTED, False, state.reason, message)],
                  message=f"{message}; {place.note}" if place else message,
                  queue_position=place.position if place else None)


def deferred(status: JobStatus, *, message: str, now: datetime, generation: int | None = None) -> JobStatus:
    """A check before queueing could not be made (an API or storage error): the job stays
    Pending with Resolved False, the message saying what failed, until a retry passes."""
    if _finished(status):
        return status
    return _apply(status, now, generation, [(C.RESOLVED, False, Reason.CHECK_DEFERRED, message)], message=message)


def waiting_for_node(status: JobStatus, *, matched: bool, message: str, now: datetime) -> JobStatus:
    """A queued job's Admitted reason says whether any GPU node matches its placement at all
    (NoMatchingNode) or it only waits for one to be free (Queued)."""
    admitted_ = find_condition(status.conditions, C.ADMITTED)
    if _finished(status) or admitted_ is None or admitted_.status == "True":
        return status
    if matched == (admitted_.reason != Reason.NO_MATCHING_NODE):
        return status
    reason = Reason.QUEUED if matched else Reason.NO_MATCHING_NODE
    return _apply(status, now, None, [(C.ADMITTED, False, reason, message)], message=message)


def admitted(
    status: JobStatus,
    *,
    node: str,
    gpus: int,
    pod: str,
    attempt: int,
    now: datetime,
    generation: int | None = None,
) -> JobStatus:
    """The scheduler gave the job `node` and the trainer pod `pod` of `attempt` was created.

    Idempotent for the same attempt (a retried status patch replaces its record).
    """
    if _finished(status):
        return status
    record = Attempt(number=attempt, pod=pod, node=node, start_time=rfc3339(now))
    attempts = [a for a in status.attempts if a.number != attempt]
    if status.attempt != attempt:
        # An attempt left open (its end never observed) is closed, not counted, so a job
        # never shows two live attempts.
        attempts, _ = _close_attempt(
            attempts, status.attempt, now, reason=Reason.DISRUPTED, message=f"superseded by attempt {attempt}"
        )
    attempts.append(record)
    message = f"node {node} ({gpus} GPUs), attempt {attempt}"
    return _apply(
        status,
        now,
        generation,
        [
            (C.ADMITTED, True, Reason.NODE_ASSIGNED, message),
            (C.RUNNING, False, Reason.NODE_ASSIGNED, f"pod {pod} is starting"),
        ],
        node=node,
        gpus=gpus,
        attempt=attempt,
        attempts=attempts,
        queue_position=None,
        queue=None,
        not_before=None,
        admitted_at=status.admitted_at or rfc3339(now),
        message=message,
    )


def pod_running(status: JobStatus, *, now: datetime, generation: int | None = None) -> JobStatus:
    """The trainer container of the current attempt is running."""
    if _finished(status):
        return status
    message = f"training on node {status.node}, attempt {status.attempt}"
    return _apply(
        status,
        now,
        generation,
        [(C.RUNNING, True, Reason.POD_RUNNING, message)],
        start_time=status.start_time or rfc3339(now),
        message=message,
    )


def _close_attempt(
    attempts: list[Attempt],
    number: int,
    now: datetime,
    *,
    reason: str,
    message: str,
    exit_code: int | None = None,
    counted: bool = False,
) -> tuple[list[Attempt], bool]:
    """Close the open attempt `number`; returns the attempts and whether one was closed."""
    closed = False
    result = []
    for record in attempts:
        if record.number == number and record.end_time is None:
            update = {"end_time": rfc3339(now), "reason": str(reason), "message": message or None}
            record = record.model_copy(update={**update, "exit_code": exit_code, "counted": counted})
            closed = True
        result.append(record)
    return result, closed


def attempt_ended(
    status: JobStatus,
    *,
    outcome: Outcome,
    action: Action,
    now: datetime,
    generation: int | None = None,
) -> JobStatus:
    """The current attempt's pod ended with `outcome`; apply `action` (from `next_action`).

    The attempt is closed once: calling this again for the same attempt does not count the
    failure twice. REQUEUE releases the node and sets Admitted False with the action's reason
    (Backoff with notBefore, Disrupted or Unschedulable); SUCCEED and FAIL end the job.
    """
    if action.kind is ActionKind.NONE or _finished(status):
        return status
    reason = str(outcome.reason or action.reason or "")
    attempts, closed = _close_attempt(
        status.attempts,
        status.attempt,
        now,
        reason=reason,
        message=outcome.message,
        exit_code=outcome.exit_code,
        counted=outcome.counted,
    )
    retries = status.retries + (1 if closed and outcome.counted else 0)
    status = status.model_copy(update={"attempts": attempts, "retries": retries})
    if action.kind is ActionKind.SUCCEED:
        return succeeded(status, now=now, generation=generation, message=action.message or outcome.message,
                         reason=action.reason or Reason.TRAINING_COMPLETE)
    if action.kind is ActionKind.FAIL:
        return failed(status, reason=action.reason or reason, message=action.message, now=now, generation=generation)
    return _apply(
        status,
        now,
        generation,
        [
            (C.ADMITTED, False, action.reason or reason, action.message),
            (C.RUNNING, False, reason, outcome.message),
        ],
        node=None,
        gpus=None,
        not_before=rfc3339(action.not_before) if action.not_before else None,
        message=action.message,
    )


def succeeded(
    status: JobStatus, *, now: datetime, generation: int | None = None, message: str = "training complete",
    reason: Reason = Reason.TRAINING_COMPLETE,
) -> JobStatus:
    """Training finished (`reason`: TrainingComplete, or StoppedEarly); the node is released. Closes an
    attempt still open."""
    if _finished(status):
        return status
    attempts, _ = _close_attempt(status.attempts, status.attempt, now, reason=reason, message=message, exit_code=0)
    return _apply(
        status,
        now,
        generation,
        [
            (C.SUCCEEDED, True, reason, message),
            (C.RUNNING, False, reason, message),
            (C.ADMITTED, False, reason, "the GPU node is released"),
        ],
        attempts=attempts,
        queue_position=None,
        queue=None,
        not_before=None,
        completion_time=rfc3339(now),
        message=message,
    )


def failed(status: JobStatus, *, reason: str, message: str, now: datetime, generation: int | None = None) -> JobStatus:
    """The job ends without a result (InputError, RetriesExhausted, DeadlineExceeded, InvalidSpec...).

    An attempt still open is closed with the same reason, not counted.
    """
    if _finished(status):
        return status
    attempts, _ = _close_attempt(status.attempts, status.attempt, now, reason=reason, message=message)
    conditions = [(C.FAILED, True, reason, message)]
    for type_ in (C.RUNNING, C.ADMITTED):
        if find_condition(status.conditions, type_) is not None:
            conditions.append((type_, False, reason, message))
    return _apply(
        status,
        now,
        generation,
        conditions,
        attempts=attempts,
        queue_position=None,
        queue=None,
        not_before=None,
        completion_time=rfc3339(now),
        message=message,
    )


def cancelled(
    status: JobStatus, *, now: datetime, generation: int | None = None, message: str = "cancelled by the user"
) -> JobStatus:
    """The job was cancelled: Failed with reason Cancelled, phase Cancelled."""
    return failed(status, reason=CANCELLED, message=message, now=now, generation=generation)


def suspended(status: JobStatus, *, now: datetime, generation: int | None = None) -> JobStatus:
    """spec.suspend was set: the pod is (being) deleted, the node released, the attempt closed."""
    if _finished(status):
        return status
    message = "spec.suspend is true"
    attempts, _ = _close_attempt(status.attempts, status.attempt, now, reason=Reason.SUSPENDED, message=message)
    conditions = [
        (C.SUSPENDED, True, Reason.SUSPENDED, message),
        (C.ADMITTED, False, Reason.SUSPENDED, message),
    ]
    if find_condition(status.conditions, C.RUNNING) is not None:
        conditions.append((C.RUNNING, False, Reason.SUSPENDED, message))
    return _apply(
        status,
        now,
        generation,
        conditions,
        attempts=attempts,
        node=None,
        gpus=None,
        queue_position=None,
        queue=None,
        message=message,
    )


def resumed(status: JobStatus, *, now: datetime, generation: int | None = None) -> JobStatus:
    """spec.suspend was cleared: the job is queued again."""
    if _finished(status) or not is_true(status, C.SUSPENDED):
        return status
    message = "spec.suspend was cleared; waiting for a free GPU node"
    conditions = [(C.SUSPENDED, False, Reason.RESUMED, message), (C.ADMITTED, False, Reason.QUEUED, message)]
    return _apply(status, now, generation, conditions, message=message)

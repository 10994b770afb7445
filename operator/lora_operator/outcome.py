"""How a trainer pod ended, and what the job does next. Pure.

`classify` reads a plain snapshot of the pod (the k8s adapter fills it) and names the
outcome; `next_action` turns the outcome and the job's status into a decision:

=============  =========  ========================================================
Outcome        Counted    Next
=============  =========  ========================================================
SUCCEEDED      -          succeed
DISRUPTED      no         back to the queue at once (eviction, preemption, node loss)
CRASHED        yes        back to the queue after backoff (OOM-kill included); fail
                          with RetriesExhausted past retryPolicy.maxRetries
TRANSIENT      yes        as CRASHED. Counted on purpose: a store that stays down for
                          the whole backoff ladder is an outage to report, not to loop on
INPUT_ERROR    -          fail at once, the exit code's name in the message
STUCK          no         unschedulable or image not pullable past the timeout: back to
                          the queue once (maybe another node), then fail Unschedulable
STILL_RUNNING  -          nothing
=============  =========  ========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from .api import INPUT_ERRORS, ExitCode, JobStatus, Reason, RetryPolicy
from .api.exitcodes import describe

DISRUPTION_REASONS = frozenset(
    {
        "Evicted",
        "Preempting",
        "NodeLost",
        "Shutdown",
        "NodeShutdown",
        "Terminated",
        "UnexpectedAdmissionError",
        "NodeAffinity",
        "Deleted",
    }
)
"""Pod status reasons that mean the node or the cluster ended the pod, not the trainer."""
STUCK_WAITING_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
"""Container waiting reasons that do not clear up by themselves."""


class OutcomeKind(StrEnum):
    """What became of a trainer pod."""

    STILL_RUNNING = "StillRunning"
    SUCCEEDED = "Succeeded"
    DISRUPTED = "Disrupted"
    CRASHED = "Crashed"
    TRANSIENT = "Transient"
    INPUT_ERROR = "InputError"
    STUCK = "Stuck"


COUNTED = frozenset({OutcomeKind.CRASHED, OutcomeKind.TRANSIENT})
"""Outcomes that count against retryPolicy.maxRetries."""


@dataclass(frozen=True, slots=True)
class PodSnapshot:
    """What the classifier needs to know about a trainer pod."""

    phase: str
    """Pending, Running, Succeeded, Failed or Unknown."""
    exit_code: int | None = None
    """Exit code of the terminated trainer container."""
    terminated_reason: str | None = None
    """Its terminated reason: Completed, Error, OOMKilled, ContainerStatusUnknown."""
    termination_message: str | None = None
    """Its termination message (the last log lines on error)."""
    status_reason: str | None = None
    """status.reason of the pod: Evicted, Preempting, NodeLost, UnexpectedAdmissionError, ..."""
    status_message: str | None = None
    disruption_target: bool = False
    """The DisruptionTarget condition is True (preemption, taint eviction, API eviction, GC).
    While the pod still runs (terminating) the outcome stays STILL_RUNNING: the node is not
    free until the pod has ended."""
    node_deleted: bool = False
    """The pod's node no longer exists."""
    missing: bool = False
    """The pod itself is gone (deleted by someone or garbage-collected) before it ended."""
    waiting_reason: str | None = None
    """Waiting reason of the container: ImagePullBackOff, CreateContainerConfigError, ..."""
    waiting_message: str | None = None
    unschedulable_since: datetime | None = None
    """lastTransitionTime of PodScheduled=False/Unschedulable, if the pod is unschedulable."""
    waiting_since: datetime | None = None
    """Since when the container waits (the pod's PodScheduled time, or its creation)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The classification of a trainer pod."""

    kind: OutcomeKind
    reason: Reason | None = None
    """The reason recorded on the attempt (None while still running)."""
    message: str = ""
    exit_code: int | None = None

    @property
    def counted(self) -> bool:
        """Whether this outcome counts against retryPolicy.maxRetries."""
        return self.kind in COUNTED


RUNNING = Outcome(OutcomeKind.STILL_RUNNING)


def classify(pod: PodSnapshot, now: datetime, *, unschedulable_timeout: float) -> Outcome:
    """Classify a trainer pod.

    Args:
        pod: The snapshot.
        now: The current time (for the stuck timeout).
        unschedulable_timeout: Seconds a pod may stay unschedulable or fail to start its
            container (config.unschedulable_timeout).
    """
    if pod.phase == "Succeeded" or (pod.phase == "Failed" and pod.exit_code == 0):
        return Outcome(OutcomeKind.SUCCEEDED, Reason.TRAINING_COMPLETE, "the trainer finished", 0)
    if pod.node_deleted or pod.missing:
        cause = "its node was deleted" if pod.node_deleted else "the pod was deleted"
        return Outcome(OutcomeKind.DISRUPTED, Reason.DISRUPTED, cause, pod.exit_code)
    if pod.phase == "Failed":
        return _classify_failed(pod)
    if pod.phase == "Pending":
        return _classify_pending(pod, now, unschedulable_timeout)
    return RUNNING


def _disrupted(pod: PodSnapshot) -> bool:
    # ContainerStatusUnknown: the kubelet lost track of the container (node restart, eviction),
    # nothing the trainer did. An OOM-kill stays a crash even when a disruption followed it.
    if pod.status_reason in DISRUPTION_REASONS or pod.terminated_reason == "ContainerStatusUnknown":
        return True
    return pod.disruption_target and pod.terminated_reason != "OOMKilled"


ERROR_MARK = "error: "
"""How lora-train prints a failure, as its last line(s), after whatever it logged before."""
MAX_DETAIL = 500


def trainer_error(termination_message: str | None) -> str:
    """The trainer's error out of its termination message, which the kubelet fills with the log's
    tail (FallbackToLogsOnError): the text from its last ``error:`` line on, else the last line
    (a traceback's exception). Never the log lines before it: the start of the job's message is
    what ``kubectl get -o wide`` shows.
    """
    lines = (termination_message or "").strip().splitlines() or [""]
    marked = [i for i, line in enumerate(lines) if line.startswith(ERROR_MARK)]
    text = "\n".join(lines[marked[-1]:])[len(ERROR_MARK):].strip() if marked else lines[-1].strip()
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 1] + "…"


def _classify_failed(pod: PodSnapshot) -> Outcome:
    detail = trainer_error(pod.termination_message)
    if _disrupted(pod):
        cause = pod.status_message or pod.status_reason or pod.terminated_reason or "disruption"
        return Outcome(OutcomeKind.DISRUPTED, Reason.DISRUPTED, f"pod disrupted: {cause}", pod.exit_code)
    if pod.terminated_reason == "OOMKilled":
        message = "the trainer ran out of memory (OOMKilled); lower batchSize or enable gradientCheckpointing"
        return Outcome(OutcomeKind.CRASHED, Reason.CRASHED, message, pod.exit_code)
    code = pod.exit_code
    if code is None:
        cause = pod.status_message or pod.status_reason or pod.terminated_reason or "no exit code"
        return Outcome(OutcomeKind.CRASHED, Reason.CRASHED, f"pod failed: {cause}", None)
    text = describe(code) + (f": {detail}" if detail else "")
    if code in INPUT_ERRORS:
        return Outcome(OutcomeKind.INPUT_ERROR, Reason.INPUT_ERROR, text, code)
    if code == ExitCode.TRANSIENT:
        return Outcome(OutcomeKind.TRANSIENT, Reason.CRASHED, text, code)
    return Outcome(OutcomeKind.CRASHED, Reason.CRASHED, text, code)


def _classify_pending(pod: PodSnapshot, now: datetime, timeout: float) -> Outcome:
    limit = timedelta(seconds=timeout)
    if pod.unschedulable_since is not None and now - pod.unschedulable_since > limit:
        detail = pod.status_message or "no node accepted the pod"
        return Outcome(OutcomeKind.STUCK, Reason.UNSCHEDULABLE, f"unschedulable for {timeout:g}s: {detail}")
    if (
        pod.waiting_reason in STUCK_WAITING_REASONS
        and pod.waiting_since is not None
        and now - pod.waiting_since > limit
    ):
        detail = f"{pod.waiting_reason}: {pod.waiting_message}" if pod.waiting_message else pod.waiting_reason
        return Outcome(OutcomeKind.STUCK, Reason.UNSCHEDULABLE, f"container not started after {timeout:g}s: {detail}")
    return RUNNING


class ActionKind(StrEnum):
    """What the job does after an outcome."""

    NONE = "None"
    """Keep waiting for the pod."""
    REQUEUE = "Requeue"
    """Back to the queue (Admitted=False); admitted again when a node is free after not_before."""
    SUCCEED = "Succeed"
    FAIL = "Fail"


@dataclass(frozen=True, slots=True)
class Action:
    """The decision after an outcome."""

    kind: ActionKind
    reason: Reason | None = None
    """Reason for the Admitted (requeue) or Failed/Succeeded condition."""
    message: str = ""
    not_before: datetime | None = None
    """Requeue: not admitted again before this time (None: at once)."""


def backoff_delay(retries: int, policy: RetryPolicy) -> float:
    """Seconds to wait before the next attempt after `retries` counted failures (from 1).

    backoffSeconds doubles per counted failure, capped at maxBackoffSeconds.
    """
    if retries < 1:
        return 0.0
    exponent = min(retries - 1, 32)  # the cap is reached long before; avoid huge ints
    return float(min(policy.backoff_seconds * 2**exponent, policy.max_backoff_seconds))


def next_action(outcome: Outcome, status: JobStatus, policy: RetryPolicy, now: datetime) -> Action:
    """Decide what the job does after `outcome`.

    Args:
        outcome: The classification of the current attempt's pod.
        status: The job's status while that attempt ran (before it is closed).
        policy: The resolved retry policy.
        now: The current time.
    """
    kind = outcome.kind
    if kind is OutcomeKind.STILL_RUNNING:
        return Action(ActionKind.NONE)
    if kind is OutcomeKind.SUCCEEDED:
        return Action(ActionKind.SUCCEED, Reason.TRAINING_COMPLETE, "training complete")
    if kind is OutcomeKind.INPUT_ERROR:
        return Action(ActionKind.FAIL, Reason.INPUT_ERROR, outcome.message)
    if kind is OutcomeKind.DISRUPTED:
        return Action(ActionKind.REQUEUE, Reason.DISRUPTED, f"{outcome.message}; retrying (not counted)")
    if kind is OutcomeKind.STUCK:
        earlier = [a for a in status.attempts if a.reason == Reason.UNSCHEDULABLE and a.number != status.attempt]
        if earlier:
            return Action(ActionKind.FAIL, Reason.UNSCHEDULABLE, outcome.message)
        return Action(ActionKind.REQUEUE, Reason.UNSCHEDULABLE, f"{outcome.message}; queued again once")
    retries = status.retries + 1
    if retries > policy.max_retries:
        message = f"{outcome.message}; {retries} counted failures, retryPolicy.maxRetries is {policy.max_retries}"
        return Action(ActionKind.FAIL, Reason.RETRIES_EXHAUSTED, message)
    delay = backoff_delay(retries, policy)
    message = f"{outcome.message}; retry {retries}/{policy.max_retries} in {delay:g}s"
    return Action(ActionKind.REQUEUE, Reason.BACKOFF, message, now + timedelta(seconds=delay))

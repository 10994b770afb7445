"""Condition types and reasons of a LoraTrainingJob: named constants, each with its meaning.

Conditions are the truth; ``status.phase`` is only their summary for the printer column.
"""

from __future__ import annotations

from enum import StrEnum


class ConditionType(StrEnum):
    """The condition types a job carries (Kubernetes conventions)."""

    ADMITTED = "Admitted"
    """The job left the queue and holds a GPU node."""
    RUNNING = "Running"
    """A trainer pod of the current attempt is running."""
    SUSPENDED = "Suspended"
    """spec.suspend is true: no pod runs and the job keeps its place."""
    SUCCEEDED = "Succeeded"
    """Training finished; checkpoints and previews are in status and storage."""
    FAILED = "Failed"
    """The job ended without a result; the reason says why."""
    RESOLVED = "Resolved"
    """False while a check before queueing (template, Secret, dataset) cannot be made yet: the
    reason and message say what failed; the check is retried with a backoff of its own."""


class Reason(StrEnum):
    """CamelCase reasons for conditions and events."""

    QUEUED = "Queued"
    """Waiting for a free GPU node."""
    NODE_ASSIGNED = "NodeAssigned"
    """A free GPU node was found and the trainer pod created on it."""
    POD_RUNNING = "PodRunning"
    """The trainer container is running."""
    BACKOFF = "Backoff"
    """The last attempt crashed; the next waits for its backoff."""
    DISRUPTED = "Disrupted"
    """The pod was evicted, preempted or lost its node: retried without counting."""
    CRASHED = "Crashed"
    """The trainer crashed or was OOM-killed: retried with backoff, counting."""
    TRAINING_COMPLETE = "TrainingComplete"
    """The trainer exited 0."""
    STOPPED_EARLY = "StoppedEarly"
    """The trainer exited 0 before its last step: the validation loss stopped improving (training.earlyStop)."""
    RETRIES_EXHAUSTED = "RetriesExhausted"
    """More attempts failed than retryPolicy.maxRetries allows."""
    INPUT_ERROR = "InputError"
    """The trainer refused the input (dataset, model, config, NaN loss)."""
    INVALID_SPEC = "InvalidSpec"
    """The spec cannot be resolved (missing field after template, bad value)."""
    TEMPLATE_NOT_FOUND = "TemplateNotFound"
    """spec.template names no LoraTrainingTemplate or ClusterLoraTrainingTemplate."""
    SECRET_NOT_FOUND = "SecretNotFound"
    """spec.storage.secretRef names no Secret in the job's namespace."""
    DATASET_EMPTY = "DatasetEmpty"
    """spec.dataset.uri holds no objects."""
    MODEL_NOT_FOUND = "ModelNotFound"
    """spec.baseModel.uri (or dataset.autoCaption.model) names an s3:// prefix that holds nothing."""
    NOT_ALLOWED = "NotAllowed"
    """A value the platform does not allow: a trainer image off its list, a file:// URI outside its root."""
    ENDPOINT_NOT_ALLOWED = "EndpointNotAllowed"
    """spec.storage.endpoint is not one of the endpoints the platform allows; nothing connected to it."""
    STORAGE_ACCESS_DENIED = "StorageAccessDenied"
    """The job's Secret may not read its dataset (AccessDenied): a wrong bucket or key, not an outage."""
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    """The job ran longer than spec.activeDeadlineSeconds."""
    UNSCHEDULABLE = "Unschedulable"
    """The trainer pod stayed unschedulable or its image could not be pulled."""
    SUSPENDED = "Suspended"
    """spec.suspend was set."""
    RESUMED = "Resumed"
    """spec.suspend was cleared; the job is queued again."""
    CANCELLED = "Cancelled"
    """spec.cancel was set, or the job was deleted: its pod was removed."""
    CHECKPOINT_SELECTED = "CheckpointSelected"
    """spec.selectedCheckpoint was copied to final/."""
    CHECKPOINTS_DELETED = "CheckpointsDeleted"
    """spec.deleteUnselected: the checkpoints other than the selected one were deleted."""
    CHECK_DEFERRED = "CheckDeferred"
    """A check before queueing met an API or storage error (a 403 while RBAC is set up, a
    timeout): the job stays Pending and the check is retried with backoff."""
    POD_REFUSED = "PodRefused"
    """The API server refused the trainer pod (422/400): a spec value the Pod API does not take."""
    UNEXPECTED_ERROR = "UnexpectedError"
    """The operator met an error it has no rule for while handling this job; the message names it."""
    NO_MATCHING_NODE = "NoMatchingNode"
    """No GPU node has the job's gpuType, nodeSelector labels and tolerated taints (Kubernetes' own
    node-state taints aside: a cordoned or not-ready node still matches); it waits for one."""
    PHASE_CORRECTED = "PhaseCorrected"
    """status.phase disagreed with the conditions the operator wrote (a hand edit); it was put back."""


class Phase(StrEnum):
    """The summary shown in `kubectl get ltj`."""

    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    CANCELLED = "Cancelled"


FINISHED_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})

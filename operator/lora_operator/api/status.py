"""The status of a LoraTrainingJob, written only by the operator."""

from __future__ import annotations

from pydantic import Field

from .base import ApiModel
from .conditions import Phase


class Condition(ApiModel):
    """A Kubernetes-style condition."""

    type: str
    """Admitted, Running, Suspended, Succeeded or Failed."""
    status: str
    """True, False or Unknown."""
    reason: str = ""
    """CamelCase reason."""
    message: str = ""
    """Human-readable detail."""
    last_transition_time: str | None = None
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """metadata.generation the condition was set for."""


class Attempt(ApiModel):
    """One trainer pod of the job."""

    number: int
    """Attempt number, from 1."""
    pod: str
    """Pod name."""
    node: str | None = None
    """Node the pod ran on."""
    start_time: str | None = None
    """When the pod was created."""
    end_time: str | None = None
    """When the pod ended."""
    reason: str | None = None
    """How it ended (TrainingComplete, Crashed, Disrupted, InputError, ...)."""
    exit_code: int | None = None
    """Exit code of the trainer container."""
    message: str | None = None
    """The trainer's last words or the disruption's cause."""
    counted: bool = True
    """Whether it counts against retryPolicy.maxRetries (disruptions do not)."""


class Progress(ApiModel):
    """Training progress as last reported by the trainer."""

    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    loss: float | None = None
    steps_per_second: float | None = None
    eta_seconds: float | None = None
    percent: int = 0
    """0-100, for the printer column."""
    updated_at: str | None = None


class CheckpointRecord(ApiModel):
    """A checkpoint the trainer wrote."""

    name: str
    """epoch-NNNN."""
    epoch: int
    step: int
    uri: str
    format: str
    size_bytes: int | None = None
    sha256: str | None = None
    validation_loss: float | None = None


class PreviewRecord(ApiModel):
    """Preview images of one epoch."""

    epoch: int
    prompt: str
    uris: list[str] = Field(default_factory=list)
    grid: str | None = None


class JobOutput(ApiModel):
    """The finalized result."""

    checkpoint: str | None = None
    """The selected checkpoint name."""
    uri: str | None = None
    """Where final/ is."""
    prefix: str | None = None
    """The job's output prefix (<output.uri>/<namespace>/<job>/)."""


class JobStatus(ApiModel):
    """Observed state of a LoraTrainingJob."""

    phase: Phase = Phase.PENDING
    """Summary of the conditions: Pending, Queued, Running, Succeeded, Failed, Suspended, Cancelled."""
    conditions: list[Condition] = Field(default_factory=list)
    """Admitted, Running, Suspended, Succeeded, Failed."""
    queue_position: int | None = None
    """1-based place in the queue while Queued."""
    node: str | None = None
    """The GPU node of the current attempt."""
    gpus: int | None = None
    """GPUs of that node the trainer uses."""
    attempt: int = 0
    """Current attempt number."""
    retries: int = 0
    """Counted failures so far (disruptions excluded)."""
    not_before: str | None = None
    """Backoff: not admitted again before this time."""
    attempts: list[Attempt] = Field(default_factory=list)
    progress: Progress | None = None
    checkpoints: list[CheckpointRecord] = Field(default_factory=list)
    previews: list[PreviewRecord] = Field(default_factory=list)
    output: JobOutput | None = None
    resolved_spec: dict | None = None
    """The spec after template and defaults, as the trainer sees it."""
    spec_hash: str | None = None
    """sha256 of resolvedSpec."""
    admitted_at: str | None = None
    """First admission time (for activeDeadlineSeconds)."""
    start_time: str | None = None
    completion_time: str | None = None
    observed_generation: int | None = None
    message: str | None = None
    """Last human-readable word on the job."""

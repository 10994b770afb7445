"""The status of a LoraTrainingJob, written only by the operator."""

from __future__ import annotations

from pydantic import Field

from .base import ApiModel
from .conditions import Phase
from .pod import PodSettings
from .reports import ModelFetch, SkippedFile

MAX_SKIPPED_SHOWN = 50
"""Skipped dataset files listed on the resource; manifest.json lists them all."""


class Condition(ApiModel):
    """A Kubernetes-style condition."""

    type: str
    """Admitted, Running, Suspended, Succeeded, Failed or Resolved (False while a check before queueing waits
    for a retry)."""
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
    """Optimizer steps done."""
    total_steps: int = 0
    """Optimizer steps planned (global steps: with N GPUs each takes N micro-batches)."""
    plan: str | None = None
    """How totalSteps was counted, e.g. "6 images x 10 repeats x 2 epochs / batch 4 = 30 steps"."""
    epoch: int = 0
    """Epochs done."""
    total_epochs: int = 0
    """Epochs planned."""
    loss: float | None = None
    """Training loss, smoothed over the last steps."""
    steps_per_second: float | None = None
    """Recent training speed."""
    eta_seconds: float | None = None
    """Estimated seconds until training ends."""
    percent: int = 0
    """0-100, for the printer column."""
    updated_at: str | None = None
    """When the trainer wrote this report (RFC 3339)."""
    state_save_seconds: float | None = None
    """Seconds the trainer's last resume-state save took (kept across attempts). The next trainer
    pod's terminationGracePeriodSeconds is set over it: the time a SIGTERM save needs."""


class CheckpointRecord(ApiModel):
    """A checkpoint the trainer wrote."""

    name: str
    """epoch-NNNN, or step-NNNNNNNN for one taken between epoch ends (checkpoints.everySteps)."""
    epoch: int
    """Epoch the checkpoint was taken at."""
    step: int
    """Optimizer step the checkpoint was taken at."""
    uri: str
    """Where the checkpoint file or folder is."""
    format: str
    """kohya, diffusers or embedding; with -ema (kohya-ema, ...) the training.ema average, under ema/."""
    size_bytes: int | None = None
    """Size in bytes."""
    sha256: str | None = None
    """sha256 of the file (kohya and embedding formats)."""
    validation_loss: float | None = None
    """Loss on the held-out images at this checkpoint."""


class PreviewRecord(ApiModel):
    """Preview images of one epoch."""

    epoch: int
    """Epoch the images were generated at (the epoch in progress for step previews)."""
    step: int | None = None
    """The optimizer step of previews taken between epoch ends (previews.everySteps); unset at epoch ends."""
    prompt: str
    """The prompt."""
    uris: list[str] = Field(default_factory=list)
    """The images, one per imagesPerPrompt."""
    grid: str | None = None
    """All previews of the epoch in one image."""


class QueueStatus(ApiModel):
    """Where a queued job stands."""

    estimated_start_time: str | None = None
    """When the job is expected to start (RFC 3339): the queue played forward on the running jobs'
    ETAs; unset when unknown (it fits no node, or waits behind a run of unknown length)."""


class JobOutput(ApiModel):
    """The finalized result."""

    checkpoint: str | None = None
    """The selected checkpoint name."""
    selection: str | None = None
    """Why that checkpoint: named by spec.selectedCheckpoint, or auto's pick and its reason."""
    uri: str | None = None
    """Where final/ is."""
    prefix: str | None = None
    """The job's output prefix (<output.uri>/<namespace>/<job>/<job UID>/)."""


class JobStatus(ApiModel):
    """Observed state of a LoraTrainingJob."""

    phase: Phase = Phase.PENDING
    """Summary of the conditions: Pending, Queued, Running, Succeeded, Failed, Suspended, Cancelled."""
    conditions: list[Condition] = Field(default_factory=list)
    """Admitted, Running, Suspended, Succeeded, Failed, Resolved."""
    queue_position: int | None = None
    """1-based place in the queue while Queued. For a job Kueue admits (spec.queueName), its place in
    Kueue's ClusterQueue, from Kueue's visibility API (unset where that API is not served)."""
    queue: QueueStatus | None = None
    """While Queued: the estimated start time."""
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
    """Every trainer pod of the job, oldest first."""
    progress: Progress | None = None
    """Progress of the current attempt."""
    checkpoints: list[CheckpointRecord] = Field(default_factory=list)
    """Checkpoints written so far, oldest first."""
    previews: list[PreviewRecord] = Field(default_factory=list)
    """Preview images written so far."""
    skipped_files: list[SkippedFile] = Field(default_factory=list, max_length=MAX_SKIPPED_SHOWN)
    """Dataset files the trainer did not use and why (unreadable, too large, ...); the first 50,
    all of them are in manifest.json."""
    output: JobOutput | None = None
    """Where results go (prefix, from the start), and the finalized result once
    selectedCheckpoint was copied to final/."""
    resolved_spec: dict | None = None
    """The spec after template and defaults, as the trainer sees it."""
    models: list[ModelFetch] | None = Field(default=None, max_length=16)
    """What the latest attempt's trainer found in its node's model cache (hit) or downloaded
    (bytes, seconds), from its manifest."""
    cached_on: str | None = None
    """The node whose model cache held this job's models after its latest attempt."""
    trainer_pod: PodSettings | None = None
    """The trainer-pod settings of the job's ClusterLoraTrainingTemplate (spec.pod), read when the
    spec was resolved; the operator's defaults fill in the rest when a pod is made."""
    spec_hash: str | None = None
    """sha256 of resolvedSpec."""
    admitted_at: str | None = None
    """First admission time (for activeDeadlineSeconds)."""
    start_time: str | None = None
    """When the first trainer pod started."""
    completion_time: str | None = None
    """When the job succeeded or failed."""
    observed_generation: int | None = None
    """metadata.generation the operator last acted on."""
    message: str | None = None
    """Last human-readable word on the job."""

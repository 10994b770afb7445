"""What the trainer writes to storage and the operator reads back: progress.json and manifest.json.

Both live under the job's output prefix (`contract.output_prefix`, where their keys are defined
too). Paths in them are relative to that prefix, so a copied prefix stays valid. Both record the
UID of the job that wrote them: the operator ignores (and never finalizes from) files of another
job, such as a deleted job of the same name.
"""

from __future__ import annotations

from pydantic import Field

from .base import ApiModel


class ProgressReport(ApiModel):
    """progress.json, rewritten every few seconds while training."""

    job_uid: str | None = None
    """metadata.uid of the job that wrote it (LORA_JOB_UID)."""
    attempt: int = 0
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    plan: str | None = None
    """How total_steps was counted, e.g. "6 images x 10 repeats x 2 epochs / batch 4 = 30 steps"."""
    loss: float | None = None
    steps_per_second: float | None = None
    eta_seconds: float | None = None
    updated_at: str | None = None
    phase: str = "training"
    """loading, caching, training, saving, done."""
    state_save_seconds: float | None = None
    """How long the last resume-state save took (written locally and uploaded), in seconds."""
    manifest_writes: int | None = None
    """How many times this attempt has written manifest.json; progress.json is written again after
    each. While it and `attempt` stay the same, the manifest the operator read before is current
    and it does not read it again. None (a trainer that does not count them): read each time."""


class CheckpointEntry(ApiModel):
    """A checkpoint file or folder in the manifest."""

    name: str
    epoch: int
    step: int
    format: str
    """kohya, diffusers or embedding; with -ema (kohya-ema, ...) the training.ema average, under ema/."""
    path: str
    """Relative to the job prefix."""
    size_bytes: int
    sha256: str
    validation_loss: float | None = None


class PreviewEntry(ApiModel):
    """Preview images of one prompt at one epoch."""

    epoch: int
    step: int | None = None
    """Set for previews between epoch ends (previews.everySteps)."""
    prompt: str
    paths: list[str] = Field(default_factory=list)
    grid: str | None = None
    """The epoch's grid image (all prompts), relative to the prefix."""


class SkippedFile(ApiModel):
    """A dataset file that was not used, and why."""

    file: str
    """Path relative to the dataset prefix (regularization images under regularization/)."""
    reason: str
    """Why it was skipped, e.g. "cannot decode" or "image has 400 MP, above the 100 MP limit"."""


class ModelFetch(ApiModel):
    """A model the trainer took from its node's model cache, or fetched into it."""

    uri: str
    """The model's URI (baseModel.uri, dataset.autoCaption.model)."""
    key: str
    """The cache entry: a hash of the URI and its content (ETags and sizes)."""
    hit: bool
    """Found in the node's cache: nothing was downloaded."""
    bytes: int = 0
    """Bytes downloaded (0 on a hit)."""
    seconds: float = 0.0
    """Seconds the fetch took, waiting for another process's fill of the same entry included."""


class Manifest(ApiModel):
    """manifest.json: everything the run produced, rewritten after each checkpoint."""

    job_uid: str | None = None
    """metadata.uid of the job that wrote it (LORA_JOB_UID)."""
    spec_hash: str | None = None
    images: int = 0
    """Images trained on (regularization images not counted)."""
    validation_images: int = 0
    """Images held out of training for the validation loss (0 when the dataset is too small to
    spare any and the validation loss uses training images: dataset.validationSplit)."""
    total_steps: int = 0
    checkpoints: list[CheckpointEntry] = Field(default_factory=list)
    previews: list[PreviewEntry] = Field(default_factory=list)
    skipped: list[SkippedFile] = Field(default_factory=list)
    finished: bool = False
    node_name: str | None = None
    """The node the trainer ran on (LORA_NODE_NAME): its model cache now holds `models`."""
    models: list[ModelFetch] = Field(default_factory=list)
    """The models this attempt took from the node's cache or fetched into it."""
    stopped_early: str | None = None
    """Why training ended before its last step (training.earlyStop), e.g. "no better validation loss in
    3 evaluations (best 0.1234 at step-00000150)"; None when it ran to the end."""

"""The contract between the operator's image and the trainer's (docs/CONTRACTS.md, "The trainer pod").

The operator writes a trainer pod and later reads what the trainer left in storage; the trainer
reads that pod's environment and writes those files. Each name both sides use is defined here
once: the pod's environment (`TrainerEnv` and the storage variables), the labels of the pod, and
the layout of a job's output prefix. The models of the files themselves are in `reports`.
Imports only pydantic and the standard library: the trainer runs without kopf or the Kubernetes client.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:  # spec -> status -> reports import this module
    from .spec import JobSpec

# The pod's environment: the job, set by the operator, read by the trainer (`TrainerEnv`).
ENV_JOB_SPEC = "LORA_JOB_SPEC"
"""The resolved spec as JSON; its name is passed as ``lora-train run --spec-env``."""
ENV_JOB_NAME = "LORA_JOB_NAME"
ENV_JOB_NAMESPACE = "LORA_JOB_NAMESPACE"
ENV_JOB_UID = "LORA_JOB_UID"
ENV_ATTEMPT = "LORA_ATTEMPT"
ENV_RESUME = "LORA_RESUME"
ENV_OUTPUT_PREFIX = "LORA_OUTPUT_PREFIX"
ENV_CACHE_DIR = "LORA_CACHE_DIR"
ENV_CACHE_BUDGET = "LORA_CACHE_BUDGET_BYTES"
"""Bytes the node's model cache may hold; past it, least-recently-used entries are evicted."""
ENV_NODE_NAME = "LORA_NODE_NAME"
"""The node the pod runs on (the downward API's spec.nodeName): the manifest names it, so the
operator learns which node caches which model."""
ENV_GPU_MEMORY = "LORA_GPU_MEMORY_MIB"
"""MiB of one GPU of the node the pod was placed on, from the node's label (the operator's
LORA_GPU_MEMORY_LABEL); unset when the node has none. The trainer's auto settings plan with it."""
ENV_PROGRESS_INTERVAL = "LORA_PROGRESS_INTERVAL"
"""Seconds between progress.json writes. The operator leaves it unset (the trainer's default
holds); test harnesses shorten it. Not the operator's own LORA_PROGRESS_INTERVAL, which is how
often the operator reads that file and never reaches the pod."""

# The pod's environment: storage and Hugging Face access, read by the storage client and `fetch`
# (the conventional names, so the same variables work in a shell for `lora-train` and kubectl-lora).
ENV_S3_ENDPOINT = "S3_ENDPOINT"
ENV_S3_SECURE = "S3_SECURE"
ENV_S3_REGION = "S3_REGION"
ENV_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_HF_TOKEN = "HF_TOKEN"

# The labels of a trainer pod (`trainer_labels`).
APP_NAME = "lora-operator"
COMPONENT = "trainer"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB = "lora-operator.io/job"
LABEL_JOB_UID = "lora-operator.io/job-uid"
LABEL_ATTEMPT = "lora-operator.io/attempt"
MAX_LABEL_VALUE = 63

# The job's output prefix, ``<output.uri>/<namespace>/<job>/<job UID>/`` (`output_prefix`), and
# the keys under it. Paths in the reports are relative to the prefix, so a copied prefix stays valid.
PROGRESS_KEY = "progress.json"
MANIFEST_KEY = "manifest.json"
STATE_PREFIX = "state/"
CHECKPOINTS_PREFIX = "checkpoints/"
PREVIEWS_PREFIX = "previews/"
FINAL_PREFIX = "final/"
LOGS_PREFIX = "logs/"
UID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,127}")
"""A metadata.uid (the API server makes UUIDs; the pattern only keeps separators out of the path)."""


def output_prefix(spec: JobSpec, namespace: str, name: str, uid: str) -> str:
    """``<output.uri>/<namespace>/<job>/<job UID>/``, always ending with ``/``.

    The UID makes the prefix the job's alone: a job deleted and created again with the same name
    is another object with another UID, and never sees (resumes from, reports or finalizes) the
    files of the old run. The name stays in the path so people find a job's runs by name.

    Raises:
        ValueError: The spec has no output (it was not resolved), or the UID is not one.
    """
    if spec.output is None:
        raise ValueError("spec.output: required (resolve the spec first)")
    if not UID.fullmatch(uid):
        raise ValueError(f"metadata.uid: {uid!r} is not a Kubernetes UID")
    return f"{spec.output.uri.rstrip('/')}/{namespace}/{name}/{uid}/"


def checkpoint_name(epoch: int) -> str:
    """The name of the checkpoint of an epoch, e.g. epoch-0007."""
    return f"epoch-{epoch:04d}"


def step_checkpoint_name(step: int) -> str:
    """The name of a checkpoint taken between epoch ends (checkpoints.everySteps), e.g. step-00000150:
    zero-padded so names of one kind sort by step (status lists every kind by its step)."""
    return f"step-{step:08d}"


def checkpoint_key(name: str) -> str:
    """The folder of a checkpoint under the prefix, e.g. checkpoints/epoch-0007 (no trailing /)."""
    return f"{CHECKPOINTS_PREFIX}{name}"


def previews_key(epoch: int, step: int | None = None) -> str:
    """The folder of an epoch's preview images under the prefix, e.g. previews/epoch-0007; of a step's
    (previews.everySteps), previews/step-00000150."""
    return f"{PREVIEWS_PREFIX}{checkpoint_name(epoch) if step is None else step_checkpoint_name(step)}"


def caption_cache_prefix(output_prefix: str) -> str:
    """Where auto captions are cached for every job of a namespace: ``<output.uri>/<namespace>/.caption-cache/``
    from a job's ``<output.uri>/<namespace>/<job>/<uid>/`` (a dot name: no job is called that)."""
    parts = output_prefix.rstrip("/").rsplit("/", 2)
    if len(parts) != 3:
        raise ValueError(f"{output_prefix}: not a job output prefix (<uri>/<namespace>/<job>/<uid>/)")
    return f"{parts[0]}/.caption-cache/"


def attempt_log_key(attempt: int) -> str:
    """Where the trainer keeps the last lines of an attempt's output, e.g. logs/attempt-2.txt:
    a pod's log goes with the pod, this stays for `kubectl lora logs --attempt N`."""
    return f"{LOGS_PREFIX}attempt-{attempt}.txt"


def job_label_value(name: str) -> str:
    """The value of the job label: the name, or a hash of it when it is too long for a label value."""
    return name if len(name) <= MAX_LABEL_VALUE else hashlib.sha256(name.encode()).hexdigest()[:32]


def trainer_labels(job_name: str, job_uid: str, attempt: int) -> dict[str, str]:
    """The labels of a trainer pod (selectable with `trainer_selector`)."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_COMPONENT: COMPONENT,
        LABEL_MANAGED_BY: APP_NAME,
        LABEL_JOB: job_label_value(job_name),
        LABEL_JOB_UID: job_uid,
        LABEL_ATTEMPT: str(attempt),
    }


def trainer_selector(job_uid: str | None = None) -> str:
    """Label selector of all trainer pods, or of one job's pods when `job_uid` is given."""
    selector = f"{LABEL_NAME}={APP_NAME},{LABEL_COMPONENT}={COMPONENT}"
    return f"{selector},{LABEL_JOB_UID}={job_uid}" if job_uid else selector


class TrainerEnv(BaseModel):
    """The job's part of a trainer pod's environment: what the operator writes (`to_env`) and the
    trainer reads back (`from_env`). The spec itself travels in `ENV_JOB_SPEC`, the storage keys in
    the storage variables above."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output_prefix: str = ""
    """LORA_OUTPUT_PREFIX: the job's prefix (`output_prefix`); empty only outside a pod."""
    job_uid: str = ""
    """LORA_JOB_UID: metadata.uid of the job, the last folder of the prefix."""
    job_name: str | None = None
    """LORA_JOB_NAME: metadata.name of the job."""
    job_namespace: str | None = None
    """LORA_JOB_NAMESPACE: the job's namespace."""
    attempt: int = Field(default=1, ge=1)
    """LORA_ATTEMPT: the attempt number, from 1."""
    resume: bool = False
    """LORA_RESUME: "1" when the trainer resumes from the saved state (a retry), else "0"."""
    cache_dir: str | None = None
    """LORA_CACHE_DIR: the node-local model cache."""
    cache_budget_bytes: int | None = Field(default=None, ge=0)
    """LORA_CACHE_BUDGET_BYTES: the most bytes the model cache holds; unset: no limit."""
    progress_interval: float = Field(default=5.0, ge=0)
    """LORA_PROGRESS_INTERVAL: seconds between progress.json writes (unset by the operator)."""
    gpu_memory_mib: int | None = Field(default=None, ge=1)
    """LORA_GPU_MEMORY_MIB: MiB of one GPU of the pod's node, from its label; unset: the trainer asks torch."""

    @field_validator("resume", mode="before")
    @classmethod
    def _one_is_true(cls, value: object) -> object:
        # The wire format is "1" or "0": anything else reads as no resume, as it always has.
        return value == "1" if isinstance(value, str) else value

    def to_env(self) -> dict[str, str]:
        """The variables for the pod, without the unset ones."""
        values = {
            ENV_JOB_NAME: self.job_name,
            ENV_JOB_NAMESPACE: self.job_namespace,
            ENV_JOB_UID: self.job_uid,
            ENV_ATTEMPT: str(self.attempt),
            ENV_RESUME: "1" if self.resume else "0",
            ENV_OUTPUT_PREFIX: self.output_prefix,
            ENV_CACHE_DIR: self.cache_dir,
            ENV_CACHE_BUDGET: None if self.cache_budget_bytes is None else str(self.cache_budget_bytes),
            ENV_GPU_MEMORY: None if self.gpu_memory_mib is None else str(self.gpu_memory_mib),
        }
        return {name: value for name, value in values.items() if value is not None}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TrainerEnv:
        """Read the variables; unset or empty ones take their defaults.

        Raises:
            ValueError: A variable holds an unusable value; the message names it.
        """
        values = {field: env[var] for field, var in TRAINER_ENV_VARS.items() if env.get(var, "") != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            first = err.errors()[0]
            variable = TRAINER_ENV_VARS[str(first["loc"][0])]
            raise ValueError(f"{variable}: {first['msg']} (got {env.get(variable)!r})") from None


TRAINER_ENV_VARS: dict[str, str] = {
    "output_prefix": ENV_OUTPUT_PREFIX,
    "job_uid": ENV_JOB_UID,
    "job_name": ENV_JOB_NAME,
    "job_namespace": ENV_JOB_NAMESPACE,
    "attempt": ENV_ATTEMPT,
    "resume": ENV_RESUME,
    "cache_dir": ENV_CACHE_DIR,
    "cache_budget_bytes": ENV_CACHE_BUDGET,
    "progress_interval": ENV_PROGRESS_INTERVAL,
    "gpu_memory_mib": ENV_GPU_MEMORY,
}
"""`TrainerEnv` field -> environment variable."""

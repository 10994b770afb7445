"""The operator's configuration, read once from the environment of its Deployment.

Every setting has one environment variable (docs/CONTRACTS.md, "Operator configuration").
A bad value stops the operator at start with a message naming the variable, rather than
surfacing later as a half-working reconcile loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, ValidationInfo, field_validator

from .api.pod import PodSettings
from .api.spec import Toleration
from .endpoints import parse_endpoint, unsafe_address
from .scheduling import Toleration as SchedulingToleration
from .scheduling import resource_toleration

NamespaceKey = Annotated[str, StringConstraints(pattern=r"^(\*|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$")]

JSON_EXPECTED = {
    "namespace_node_limits": 'a JSON object like {"team-a": 4, "*": 2}',
    "trainer_allowed_images": 'a JSON list like ["registry.example.com/lora/*"]',
    "gpu_tolerations": 'a JSON list like [{"key": "dedicated", "operator": "Equal", "value": "gpu"}]',
    "trainer_pod": 'a JSON object like {"limits": {"cpu": "8", "memory": "64Gi"}, "shmSize": "16Gi"}',
}
"""What a JSON-valued variable must hold, for its error message."""


class ConfigError(ValueError):
    """An environment variable of the operator holds a value it cannot use."""

    def __init__(self, variable: str, message: str):
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class OperatorConfig(BaseModel):
    """Settings of the operator process. Immutable; build it with `OperatorConfig.from_env()`."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    trainer_image: str = Field(default="ghcr.io/lora-operator/lora-trainer:0.1.0", min_length=1)
    """LORA_TRAINER_IMAGE: trainer image for jobs without spec.placement.image."""
    trainer_allowed_images: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    """LORA_TRAINER_ALLOWED_IMAGES: a JSON list of the images spec.placement.image (of a job or its
    template) may name besides LORA_TRAINER_IMAGE: exact names, or prefixes ending in "*", e.g.
    ["registry.example.com/lora/*"]. Default: none, only the trainer image runs."""
    trainer_pod: PodSettings = Field(default_factory=PodSettings)
    """LORA_TRAINER_POD: a JSON object, the trainer pods' CPU, memory and ephemeral-storage limits and
    requests (requests default to the limits: Guaranteed QoS), /dev/shm size, image pull secrets,
    priority class and annotations (the chart's trainer.pod); a ClusterLoraTrainingTemplate's
    spec.pod overrides them for its jobs. Default: /dev/shm of 8Gi, nothing else."""
    model_cache_host_path: str = Field(default="", pattern=r"^(/[^/]+)*$")
    """LORA_MODEL_CACHE_HOST_PATH: a folder on every GPU node, writable by uid 1000, that trainer
    pods mount as their model cache (base models, the torch compile cache), so a retry or a later
    job on the node downloads and compiles nothing again. It must exist (hostPath type Directory).
    Default: empty, each pod gets an emptyDir (many clusters forbid hostPath)."""
    model_cache_budget_gib: int = Field(default=200, ge=1)
    """LORA_MODEL_CACHE_BUDGET_GIB: GiB the node's model cache may hold; past it the trainer evicts
    the least recently used models. Default: 200."""
    file_uri_root: str = Field(default="", pattern=r"^(/[^/]+)*$")
    """LORA_FILE_URI_ROOT: the folder, in the trainer container, that file:// URIs of a job must lie
    under (a volume the platform mounts, e.g. a model cache). Default: empty, file:// is refused."""
    trainer_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """LORA_TRAINER_IMAGE_PULL_POLICY: imagePullPolicy of trainer pods."""
    trainer_service_account: str = Field(default="lora-trainer", min_length=1, max_length=253)
    """LORA_TRAINER_SERVICE_ACCOUNT: service account of trainer pods (its token is never mounted)."""
    storage_endpoint: str = ""
    """LORA_STORAGE_ENDPOINT: host:port of the S3 endpoint (MinIO) the trainer and operator use by default
    (empty: AWS S3). Always allowed in spec.storage.endpoint."""
    storage_allowed_endpoints: tuple[str, ...] = ()
    """LORA_STORAGE_ALLOWED_ENDPOINTS: comma-separated further endpoints (host:port or http(s)://host:port) a job
    may name in spec.storage.endpoint; any other endpoint is refused before a connection is made."""
    storage_secure: bool = False
    """LORA_STORAGE_SECURE: use TLS to the storage endpoint ("true"/"false")."""
    storage_secret: str = Field(default="lora-storage", min_length=1, max_length=253)
    """LORA_STORAGE_SECRET: Secret (keys accessKey, secretKey) in the job's namespace for jobs without
    spec.storage.secretRef. The operator reads, checks and finalizes a job's storage with that job's Secret
    only: it has no storage key of its own."""
    storage_allowed_secret_names: tuple[str, ...] | None = None
    """LORA_STORAGE_ALLOWED_SECRET_NAMES: comma-separated Secret names besides LORA_STORAGE_SECRET that
    spec.storage.secretRef may name (the chart's storage.allowedSecretNames, the names its RBAC lets the
    operator read). A job naming another fails at once, without a read; a 403 on a listed name is taken
    as RBAC still being set up and retried. Unset: no list, the API server's RBAC alone decides."""
    gpu_resource: str = Field(default="nvidia.com/gpu", pattern=r"^[A-Za-z0-9.-]+/[A-Za-z0-9._-]+$")
    """LORA_GPU_RESOURCE: extended resource name of the GPUs."""
    gpu_tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """LORA_GPU_TOLERATIONS: a JSON list of tolerations every trainer pod carries besides the one of
    the LORA_GPU_RESOURCE taint (the chart's gpu.toleration), e.g. for GPU nodes tainted
    dedicated=gpu:NoSchedule. The scheduler counts on them as the pod does."""
    gpu_type_label: str = Field(default="lora-operator.io/gpu-type", min_length=1, max_length=317)
    """LORA_GPU_TYPE_LABEL: node label whose value spec.placement.gpuType must equal."""
    gpu_memory_label: str = Field(default="nvidia.com/gpu.memory", min_length=1, max_length=317)
    """LORA_GPU_MEMORY_LABEL: node label holding the memory of one of the node's GPUs in MiB (NVIDIA GPU
    feature discovery sets nvidia.com/gpu.memory). The operator passes it to the trainer pod it places on
    the node (LORA_GPU_MEMORY_MIB), whose gradientCheckpointing, baseQuantization and offload auto plan with
    it; on a node without the label the trainer asks the GPU itself."""
    trainer_termination_grace_seconds: int = Field(default=120, ge=1, le=3600)
    """LORA_TRAINER_TERMINATION_GRACE_SECONDS: terminationGracePeriodSeconds of trainer pods: the time a
    trainer gets on SIGTERM (a preemption, eviction or drain) to save its resume state and exit. The
    floor: once the job's trainer measured a save (status.progress.stateSaveSeconds) its later pods
    get twice that plus one step plus 30 s when more (lora_operator/grace.py)."""
    kueue_enabled: bool = False
    """LORA_KUEUE_ENABLED: jobs that name a Kueue LocalQueue (spec.queueName or the label
    kueue.x-k8s.io/queue-name) run as batch/v1 Jobs that Kueue admits; off: a job with spec.queueName fails
    NotAllowed."""
    watch_namespace: str = ""
    """LORA_WATCH_NAMESPACE: the one namespace to watch; empty watches all."""
    metrics_port: int = Field(default=8080, ge=1, le=65535)
    """LORA_METRICS_PORT: port of the Prometheus endpoint."""
    unschedulable_timeout: float = Field(default=300.0, gt=0)
    """LORA_UNSCHEDULABLE_TIMEOUT: seconds a trainer pod may stay unschedulable or fail to pull its image."""
    progress_interval: float = Field(default=10.0, gt=0)
    """LORA_PROGRESS_INTERVAL: seconds between progress reads of a running job."""
    webhook_attempts: int = Field(default=6, ge=1, le=100)
    """LORA_WEBHOOK_ATTEMPTS: tries of each spec.notify.webhook delivery."""
    webhook_backoff_seconds: float = Field(default=2.0, gt=0)
    """LORA_WEBHOOK_BACKOFF_SECONDS: wait before a webhook's first retry, doubled each retry."""
    namespace_node_limits: dict[NamespaceKey, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    """LORA_NAMESPACE_NODE_LIMITS: a JSON object, the most GPU nodes a namespace's jobs may hold at once,
    e.g. {"team-a": 4, "*": 2} ("*": every namespace not listed). Jobs over the limit wait in their place."""
    peering_name: str = Field(default="lora-operator", pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    """LORA_PEERING_NAME: the kopf peering object the replicas share (the chart's operator.peeringName,
    which creates it)."""
    peering_lifetime: int = Field(default=60, ge=1)
    """LORA_PEERING_LIFETIME: seconds a replica's peering record counts as alive; a standby takes over
    this long after the active replica died (kill -9 leaves its record behind)."""
    api_connections: int = Field(default=64, ge=1)
    """LORA_API_CONNECTIONS: connections kopf's client keeps to the API server at most (its watches,
    patches and Events)."""
    list_chunk: int = Field(default=500, ge=1)
    """LORA_LIST_CHUNK: objects per page when kopf lists a resource (a relist of every job at once
    parses into one huge response before the first job is indexed)."""
    malloc_arenas: int = Field(default=2, ge=0)
    """LORA_MALLOC_ARENAS: the most glibc malloc arenas (0: glibc's default), see `heap`."""
    tracemalloc: str = ""
    """LORA_TRACEMALLOC: a folder for allocation dumps on SIGUSR1 (diagnostics for bench/, see
    `diagnostics.start_tracemalloc`); empty: off."""
    tracemalloc_frames: int = Field(default=10, ge=1)
    """LORA_TRACEMALLOC_FRAMES: stack frames kept per traced allocation."""
    tracemalloc_seconds: float = Field(default=15.0, gt=0)
    """LORA_TRACEMALLOC_SECONDS: seconds between the dumps after tracing started."""

    @field_validator("storage_allowed_endpoints", "storage_allowed_secret_names", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("storage_endpoint", "storage_allowed_endpoints")
    @classmethod
    def _endpoints_parse(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        for text in (value,) if isinstance(value, str) else value:
            if not text:
                continue
            endpoint = parse_endpoint(text)  # EndpointError is a ValueError: pydantic names the field
            if why := unsafe_address(endpoint):
                raise ValueError(f"{text!r}: {why}")
        return value

    @field_validator("namespace_node_limits", "trainer_allowed_images", "gpu_tolerations", "trainer_pod",
                     mode="before")
    @classmethod
    def _from_json(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"not {JSON_EXPECTED[info.field_name]}") from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Build the configuration from environment variables.

        Unset or empty variables take their defaults.

        Args:
            env: The environment to read; defaults to ``os.environ``.

        Raises:
            ConfigError: A variable holds an unusable value; the message names it.
        """
        env = os.environ if env is None else env
        values = {field: env[var] for field, var in ENV_VARS.items() if env.get(var, "").strip() != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            first = err.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            variable = ENV_VARS.get(field, field)
            raise ConfigError(variable, f"{first['msg']} (got {env.get(variable)!r})") from err

    def env_var(self, field: str) -> str:
        """The environment variable that sets `field` (for messages and the Helm chart)."""
        return ENV_VARS[field]

    @property
    def trainer_tolerations(self) -> tuple[SchedulingToleration, ...]:
        """The tolerations every trainer pod carries: the GPU resource taint's and LORA_GPU_TOLERATIONS.
        The renderer puts them on the pod and the scheduler assumes them, so the two agree on nodes."""
        return (resource_toleration(self.gpu_resource),
                *(SchedulingToleration.from_mapping(t.to_resource()) for t in self.gpu_tolerations))


ENV_VARS: dict[str, str] = {
    "trainer_image": "LORA_TRAINER_IMAGE",
    "trainer_allowed_images": "LORA_TRAINER_ALLOWED_IMAGES",
    "trainer_pod": "LORA_TRAINER_POD",
    "file_uri_root": "LORA_FILE_URI_ROOT",
    "model_cache_host_path": "LORA_MODEL_CACHE_HOST_PATH",
    "model_cache_budget_gib": "LORA_MODEL_CACHE_BUDGET_GIB",
    "trainer_service_account": "LORA_TRAINER_SERVICE_ACCOUNT",
    "storage_endpoint": "LORA_STORAGE_ENDPOINT",
    "storage_secure": "LORA_STORAGE_SECURE",
    "storage_secret": "LORA_STORAGE_SECRET",
    "storage_allowed_endpoints": "LORA_STORAGE_ALLOWED_ENDPOINTS",
    "storage_allowed_secret_names": "LORA_STORAGE_ALLOWED_SECRET_NAMES",
    "gpu_resource": "LORA_GPU_RESOURCE",
    "gpu_type_label": "LORA_GPU_TYPE_LABEL",
    "gpu_memory_label": "LORA_GPU_MEMORY_LABEL",
    "trainer_termination_grace_seconds": "LORA_TRAINER_TERMINATION_GRACE_SECONDS",
    "kueue_enabled": "LORA_KUEUE_ENABLED",
    "watch_namespace": "LORA_WATCH_NAMESPACE",
    "metrics_port": "LORA_METRICS_PORT",
    "unschedulable_timeout": "LORA_UNSCHEDULABLE_TIMEOUT",
    "progress_interval": "LORA_PROGRESS_INTERVAL",
    "webhook_attempts": "LORA_WEBHOOK_ATTEMPTS",
    "webhook_backoff_seconds": "LORA_WEBHOOK_BACKOFF_SECONDS",
    "namespace_node_limits": "LORA_NAMESPACE_NODE_LIMITS",
    "trainer_image_pull_policy": "LORA_TRAINER_IMAGE_PULL_POLICY",
    "gpu_tolerations": "LORA_GPU_TOLERATIONS",
    "peering_name": "LORA_PEERING_NAME",
    "peering_lifetime": "LORA_PEERING_LIFETIME",
    "api_connections": "LORA_API_CONNECTIONS",
    "list_chunk": "LORA_LIST_CHUNK",
    "malloc_arenas": "LORA_MALLOC_ARENAS",
    "tracemalloc": "LORA_TRACEMALLOC",
    "tracemalloc_frames": "LORA_TRACEMALLOC_FRAMES",
    "tracemalloc_seconds": "LORA_TRACEMALLOC_SECONDS",
}
"""Field name -> environment variable, the whole contract of the operator's configuration."""

"""The spec of a LoraTrainingJob: what to train, on what, where it goes and how it is run."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from .base import ApiModel
from .dataset import Dataset
from .families import FAMILIES, describe_families, family_names, family_row
from .names import LABEL_KEY_MAX, LabelKey, Labels, LabelValue, ObjectName
from .training import Embedding, Network, Training
from .uris import OUTPUT_URI_PATTERN, SIZE_PATTERN, URI_PATTERN

ModelFamily = StrEnum("ModelFamily", {name.upper().replace("-", "_"): name for name in FAMILIES})
"""Names of the families of the table (`families.FAMILIES`), as constants: ModelFamily.SDXL == "sdxl",
ModelFamily.FLUX_KONTEXT == "flux-kontext"."""


def _known_family(name: str) -> str:
    family_row(name)  # raises UnknownFamilyError (a ValueError) naming the known families
    return name


def _family_schema(schema: dict) -> None:
    """The CRD enum and the explain text of baseModel.family, from the table when the schema is made."""
    schema.update(enum=family_names(), description=describe_families())


FamilyName = Annotated[str, AfterValidator(_known_family)]
"""A family of the table (validated when the spec is read, so a row added by a test is known)."""


class CleanPodPolicy(StrEnum):
    """What becomes of a trainer pod once it ended (the values of Kubeflow's runPolicy.cleanPodPolicy)."""

    ALL = "All"
    """Each pod is deleted once its attempt ended; ``kubectl lora logs`` then shows the last lines the trainer
    kept in storage."""
    NONE = "None"
    """Ended pods (Succeeded or Failed) stay until the job is deleted, as a batch/v1 Job's do: ``kubectl logs``
    reads every attempt's pod, and the garbage collector removes them with the job (see
    ttlSecondsAfterFinished)."""


class AdapterType(StrEnum):
    """What is trained."""

    LORA = "lora"
    """A LoRA on the attention and MLP linear layers."""
    LOCON = "locon"
    """A LoRA that also adapts convolution layers (network.convDim)."""
    EMBEDDING = "embedding"
    """A textual-inversion embedding (see embedding)."""
    LOHA = "loha"
    """LyCORIS LoHa: the update is the element-wise product of two rank-network.dim products, on the layers a
    lora adapts (and the convolution layers with network.convDim). Written as kohya only (hada_w1_a, ...):
    ComfyUI, A1111 and Forge load it; diffusers' load_lora_weights does not."""
    LOKR = "lokr"
    """LyCORIS LoKr: the update is the Kronecker product of a small and a rank-network.dim factor, on the layers
    a lora adapts (and the convolution layers with network.convDim). Written as kohya only (lokr_w1, ...):
    ComfyUI, A1111 and Forge load it; diffusers' load_lora_weights does not. Not for flux (its fused qkv
    layers cannot hold a Kronecker product of the q, k and v updates)."""


class BaseModelSpec(ApiModel):
    """The model the adapter is trained on."""

    family: FamilyName = Field(json_schema_extra=_family_schema)
    """A family of the table (sd15, sdxl or flux)."""
    uri: str = Field(pattern=URI_PATTERN)
    """A diffusers-format model folder or one single-file checkpoint (.safetensors in the original
    layout: SD1.5 / SDXL as on Civitai, a Flux.1 transformer in the Black Forest Labs layout):
    s3://bucket/path, file:///mounted/path, hf://org/name or hf://org/name/file.safetensors.
    No empty, . or .. path segments; an s3 bucket name has lowercase letters, digits, dots and
    hyphens only. An s3:// prefix must hold the model when the job is created (else
    ModelNotFound); file:// only under the folder the platform allows (LORA_FILE_URI_ROOT)."""
    revision: str | None = Field(default=None, max_length=100)
    """hf:// revision (branch, tag or commit); the same as @revision in the URI. Default: main."""
    config: str | None = Field(default=None, pattern=URI_PATTERN)
    """For a single-file uri of a non-standard architecture: a diffusers-layout folder with the
    parts' configs, the scheduler and the tokenizers (no weights needed). Default: the standard
    SD1.5, SDXL or Flux.1 configs that ship with the trainer."""
    components: str | None = Field(default=None, pattern=URI_PATTERN)
    """For a Flux.1 transformer file: a diffusers Flux folder that supplies the text encoders,
    tokenizers, VAE and scheduler (its transformer is not downloaded). Required then."""


class Sampler(StrEnum):
    """Preview samplers (diffusers schedulers)."""

    EULER = "euler"
    EULER_A = "euler_a"
    DDIM = "ddim"
    DPMPP_2M = "dpmpp_2m"
    FLOW_EULER = "flow_euler"


MAX_PREVIEW_IMAGES = 64
"""Most preview images per epoch (imagesPerPrompt x prompts): previews must not dwarf training."""


class Previews(ApiModel):
    """Images generated with the adapter at epoch ends, to judge epochs by eye."""

    every_epochs: int = Field(default=1, ge=0, le=1000)
    """Generate every N epochs (and at the end); 0 turns previews off. Default: 1."""
    every_steps: int = Field(default=0, ge=0, le=10_000_000)
    """Also generate every N optimizer steps between epoch ends, into previews/step-NNNNNNNN/;
    0: only at epoch ends. Default: 0."""
    prompts: list[str] = Field(default_factory=list, max_length=32)
    """Prompts; empty means the first validation caption. imagesPerPrompt x prompts is at most
    64."""
    negative_prompt: str = Field(default="", max_length=2000)
    """Negative prompt of classifier-free guidance: the guidance samples away from it. Taken where the
    family's classifier-free guidance is on: previews.guidance above 1 for sd15, sdxl, chroma, qwen-image,
    qwen-image-edit and z-image; previews.trueGuidance above 1 for flux and flux-kontext. Set anywhere
    else (that guidance at 1 or less, or flux2 and flux2-klein, whose pipelines take no negative prompt),
    the job fails (ConfigError naming this field). Default: the empty prompt."""
    images_per_prompt: int = Field(default=2, ge=1, le=16)
    """Images per prompt. Default: 2."""
    steps: int = Field(default=20, ge=1, le=200)
    """Sampling steps. Default: 20."""
    guidance: float | None = Field(default=None, ge=0.0, le=50.0)
    """Guidance scale: classifier-free guidance for sd15, sdxl, chroma, flux2-klein, qwen-image,
    qwen-image-edit and z-image; the distilled guidance the transformer embeds for flux, flux-kontext and
    flux2 (a transformer without a guidance embedder, e.g. Flux.1 schnell, has none and refuses it: see
    trueGuidance). Default: the family's, 7 (flux2 and flux2-klein: their pipelines' 4)."""
    true_guidance: float = Field(default=1.0, ge=1.0, le=50.0)
    """Real classifier-free guidance scale for flux and flux-kontext, whose previews.guidance is distilled
    guidance: above 1, every sampling step runs the transformer twice, on the prompt and on negativePrompt
    (the empty prompt by default), which doubles the sampling cost. 1 turns it off. Other families refuse
    it (ConfigError naming this field): their previews.guidance already is their classifier-free guidance
    (flux2: it has none). Default: 1."""
    sampler: Sampler = Sampler.EULER_A
    """Sampler. Default: euler_a (flow_euler for Flux)."""
    seed: int = Field(default=1234, ge=0, le=2**31 - 1)
    """Seed; the same seed every epoch so epochs compare. Default: 1234."""
    size: str | None = Field(default=None, pattern=SIZE_PATTERN)
    """WIDTHxHEIGHT of previews, each side 10 to 4096 (a larger image only exhausts the GPU's
    memory at the first epoch's end). Default: the training size."""

    @model_validator(mode="after")
    def _bounded_image_count(self) -> Previews:
        if self.images_per_prompt * len(self.prompts) > MAX_PREVIEW_IMAGES:
            raise ValueError(f"imagesPerPrompt x len(prompts) must not exceed {MAX_PREVIEW_IMAGES}")
        return self


class CheckpointFormat(StrEnum):
    """Output formats of an adapter checkpoint."""

    KOHYA = "kohya"
    """One .safetensors for ComfyUI, A1111 and Forge: sd-scripts' lora_unet_* / lora_te* keys (sd15, sdxl,
    flux), or the model's own module names under diffusion_model. as ComfyUI loads them (z-image,
    qwen-image)."""
    DIFFUSERS = "diffusers"
    """A PEFT folder for diffusers' load_lora_weights."""


class Checkpoints(ApiModel):
    """When and how checkpoints are written."""

    every_epochs: int = Field(default=1, ge=1, le=1000)
    """Write a checkpoint every N epochs (and always at the end). Default: 1."""
    every_steps: int = Field(default=0, ge=0, le=10_000_000)
    """Also write a checkpoint every N optimizer steps between epoch ends, named step-NNNNNNNN (the step,
    8 digits), with the validation loss at that step; 0: only at epoch ends. Default: 0."""
    state_every_steps: int = Field(default=100, ge=0, le=100000)
    """Save the resume state (adapter, optimizer, schedule, position) every N optimizer steps as well
    as at epoch ends, so a retried pod loses at most N steps; 0 saves it only at epoch ends.
    Default: 100."""
    formats: list[CheckpointFormat] = Field(
        default_factory=lambda: [CheckpointFormat.KOHYA, CheckpointFormat.DIFFUSERS], min_length=1, max_length=2
    )
    """Formats to write: kohya (one .safetensors for ComfyUI, A1111, Forge) and/or diffusers (a PEFT
    folder for diffusers' load_lora_weights); an embedding job writes its embedding file either way.
    Default: [kohya, diffusers]."""


class Output(ApiModel):
    """Where results go."""

    uri: str = Field(pattern=OUTPUT_URI_PATTERN)
    """Prefix (s3://bucket/prefix or file:///path, no empty, . or .. path segments); results go to
    <uri>/<namespace>/<job>/<job UID>/, a folder of this job object alone (a job created again under
    the same name gets a new one)."""


class Storage(ApiModel):
    """Credentials and endpoint of the object store."""

    secret_ref: ObjectName | None = Field(default=None, max_length=253)
    """Name of a Secret in the job's namespace with keys accessKey and secretKey (and optionally hfToken).
    The trainer and the operator use only these keys for this job's storage. Default: lora-storage in the
    job's namespace (the chart's storage.existingSecret)."""
    endpoint: str | None = Field(default=None, max_length=500)
    """host:port (or http(s)://host:port) of the S3 endpoint: one the platform allows (the chart's
    storage.endpoint, the default, or one of storage.allowedEndpoints). Any other endpoint fails the job
    (EndpointNotAllowed) before anything connects to it."""
    secure: bool | None = None
    """Use TLS to the endpoint. Default: the operator's setting."""


TOLERATION_EXISTS_VALUE = "a toleration's value must be empty when its operator is Exists"
TOLERATION_EMPTY_KEY = "a toleration without a key must have operator Exists (it then matches every taint)"
MAX_SELECTOR_LABELS = 64
MAX_TOLERATIONS = 32
"""Bounds that keep the CEL rules on each label and toleration within the apiserver's cost budget."""


class Toleration(ApiModel):
    """A Kubernetes toleration."""

    key: LabelKey | None = Field(default=None, max_length=LABEL_KEY_MAX)
    """Taint key (a label key); empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal. Default: Equal."""
    value: LabelValue | None = Field(default=None, max_length=63)
    """Taint value to match with operator Equal (a label value); empty with Exists."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""

    @model_validator(mode="after")
    def _as_the_pod_api_takes_it(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError(TOLERATION_EXISTS_VALUE)
        if not self.key and self.operator != "Exists":
            raise ValueError(TOLERATION_EMPTY_KEY)
        return self


class Placement(ApiModel):
    """Where the trainer may run. A job always gets a whole GPU node and all its GPUs."""

    node_selector: Labels = Field(default_factory=dict, max_length=MAX_SELECTOR_LABELS)
    """Node labels the GPU node must have (label keys and values)."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=MAX_TOLERATIONS)
    """Tolerations for tainted GPU nodes."""
    gpu_type: LabelValue | None = Field(default=None, max_length=63)
    """GPU type, e.g. h100: the node's label lora-operator.io/gpu-type (the chart's
    gpu.typeLabelKey) must have this value."""
    image: str | None = Field(default=None, max_length=500)
    """Trainer image: the operator's, or one the platform allows (LORA_TRAINER_ALLOWED_IMAGES, chart
    value trainer.allowedImages); another fails the job (NotAllowed). Default: the operator's
    trainer image."""


class RetryPolicy(ApiModel):
    """Retries of crashed attempts. Disruptions (eviction, node loss) never count."""

    max_retries: int = Field(default=3, ge=0, le=100)
    """Crashes tolerated before the job fails. Default: 3."""
    backoff_seconds: int = Field(default=30, ge=0, le=86400)
    """First backoff; doubles per crash. Default: 30."""
    max_backoff_seconds: int = Field(default=600, ge=0, le=86400)
    """Longest backoff. Default: 600."""

    @model_validator(mode="after")
    def _backoff_within_max(self) -> RetryPolicy:
        if self.backoff_seconds > self.max_backoff_seconds:
            raise ValueError("backoffSeconds must not exceed maxBackoffSeconds")
        return self


class Webhook(ApiModel):
    """A POST to a receiver when the job finishes."""

    secret_ref: ObjectName = Field(max_length=253)
    """Name of a Secret in the job's namespace holding the receiver's URL (key urlKey) and the HMAC key
    (key signingKeyKey). The JSON body (event job.finished: phase, reason, message, checkpoints with
    their URIs and validation losses, preview URIs, output) is signed: header X-Lora-Signature is
    sha256=<hex HMAC-SHA256 of the raw body>. Sent in the background, retried with backoff on
    errors, 5xx, 408 and 429; it never delays the operator."""
    url_key: str = Field(default="url", min_length=1, max_length=253)
    """The Secret key holding the URL (http:// or https://). Default: url."""
    signing_key_key: str = Field(default="signingKey", min_length=1, max_length=253)
    """The Secret key holding the HMAC-SHA256 key. Default: signingKey."""


class Notify(ApiModel):
    """Whom to tell when the job finishes."""

    webhook: Webhook | None = None
    """A signed JSON POST when the job ends Succeeded, Failed or Cancelled. Default: none."""


class JobSettings(ApiModel):
    """The settings a job and a template share; in a template they are the job's defaults."""

    type: AdapterType | None = None
    """lora, locon or embedding. Default: lora."""
    base_model: BaseModelSpec | None = None
    """The base model (required here or in the template)."""
    dataset: Dataset | None = None
    """The training images (dataset.uri required here or in the template)."""
    embedding: Embedding | None = None
    """Textual-inversion settings; only with type embedding."""
    network: Network | None = None
    """Adapter size (LoRA / LoCon)."""
    training: Training | None = None
    """Hyperparameters."""
    checkpoints: Checkpoints | None = None
    """Checkpoint cadence and formats."""
    previews: Previews | None = None
    """Preview images per epoch."""
    output: Output | None = None
    """Where results go (required here or in the template)."""
    storage: Storage | None = None
    """Object-store credentials."""
    placement: Placement | None = None
    """Node selection."""
    retry_policy: RetryPolicy | None = None
    """Retries and backoff."""
    notify: Notify | None = None
    """Completion notifications (a webhook)."""


class JobSpec(JobSettings):
    """Desired state of a LoraTrainingJob. Fields left out come from spec.template, then defaults."""

    template: ObjectName | None = Field(default=None, max_length=253)
    """Name of a LoraTrainingTemplate in the namespace or a ClusterLoraTrainingTemplate (an object
    name: lowercase letters, digits, '-' and '.'); its values are the defaults of this job."""
    queue_name: ObjectName | None = Field(default=None, max_length=63)
    """A Kueue LocalQueue in the job's namespace (also read from the label kueue.x-k8s.io/queue-name):
    the job skips the operator's queue and each attempt runs as a batch/v1 Job that Kueue admits,
    preempts and resumes (kueue.x-k8s.io/priority-class on the job picks its WorkloadPriorityClass).
    Immutable once the job was admitted. Default: the operator's own queue."""
    priority: int = Field(default=0, ge=-1000, le=1000)
    """Higher runs first; equal priorities run in creation order, namespaces taking turns.
    Editable at any time. Default: 0."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the job when it has run (since first admission) longer than this."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the job this long after it finished. Editable."""
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.ALL
    """All: a trainer pod is deleted once its attempt ended; None: a pod that ended stays until the job is
    deleted, its log readable with kubectl logs. A running pod is deleted when its attempt or the job ends
    either way. Editable: All deletes the pods a finished job kept. Default: All."""
    suspend: bool = False
    """Stop the pod (if any) and hold the job; clearing it queues the job again. Editable."""
    cancel: bool = False
    """End the job as Cancelled: its pod stops, and the checkpoints of finished epochs stay in
    storage and in status.checkpoints (unlike deleting the job); selectedCheckpoint still works.
    Final: clearing it later does not restart the job (kubectl lora retrain does). Editable.
    Default: false."""
    selected_checkpoint: str | None = Field(default=None, pattern=r"^(epoch-[0-9]{4}|step-[0-9]{8}|auto)$")
    """After the job succeeded (or was cancelled): the checkpoint copied to final/, e.g. epoch-0007 or
    step-00000150 (checkpoints.everySteps), or auto: the one with the lowest validation loss (the last
    one when no loss was recorded); status.output says which was picked and why. Editable."""
    delete_unselected: bool = False
    """With selectedCheckpoint set: delete every other checkpoint from storage and from
    status.checkpoints. Editable after the run, so it can be decided after looking at the
    previews. Default: false."""


IMMUTABLE_AFTER_ADMISSION = (
    "template", "type", "baseModel", "dataset", "embedding", "network", "training",
    "checkpoints", "previews", "output", "storage", "queueName",
)
"""Fields that shape the training: the apiserver refuses edits once the job was admitted."""

"""Training hyperparameters: steps, learning rates, schedule, optimizer, noise, network."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field

from .base import ApiModel
from .noise_levels import Flow, TimestepBias


class SchedulerType(StrEnum):
    """Learning-rate schedules (diffusers' get_scheduler)."""

    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"


class LrScheduler(ApiModel):
    """The learning-rate schedule."""

    type: SchedulerType = SchedulerType.COSINE_WITH_RESTARTS
    """Schedule name. Default: cosine_with_restarts."""
    warmup_steps: int = Field(default=0, ge=0)
    """Steps of linear warm-up from 0. Default: 0."""
    cycles: int = Field(default=3, ge=1, le=100)
    """Restarts for cosine_with_restarts. Default: 3."""
    power: float = Field(default=1.0, gt=0.0, le=10.0)
    """Power of the polynomial schedule. Default: 1.0."""


class OptimizerType(StrEnum):
    """Optimizers; adamw8bit needs bitsandbytes, prodigy prodigyopt, lion lion-pytorch."""

    ADAMW = "adamw"
    ADAMW8BIT = "adamw8bit"
    PRODIGY = "prodigy"
    ADAFACTOR = "adafactor"
    LION = "lion"


class Optimizer(ApiModel):
    """The optimizer of the adapter weights."""

    type: OptimizerType = OptimizerType.ADAMW
    """Optimizer name. Default: adamw."""
    weight_decay: float = Field(default=0.01, ge=0.0, le=1.0)
    """Decoupled weight decay. Default: 0.01."""


class MultiresNoise(ApiModel):
    """Multi-resolution (pyramid) noise added to the training noise."""

    iterations: int = Field(default=0, ge=0, le=10)
    """Pyramid levels; 0 turns it off. Default: 0."""
    discount: float = Field(default=0.3, ge=0.0, le=1.0)
    """Weight factor per level. Default: 0.3."""


class MixedPrecision(StrEnum):
    """Precision of the frozen weights and the forward pass."""

    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"


class Ema(ApiModel):
    """An exponential moving average of the adapter weights, written beside the raw weights."""

    enabled: bool = Field(default=False)
    """Keep the average; each checkpoint then also has its average under ema/ (formats kohya-ema,
    diffusers-ema, embedding-ema in the manifest) and previews show the average. Default: false."""
    decay: float = Field(default=0.999, gt=0.0, lt=1.0)
    """The most each step keeps of the average: after step n past startStep the average becomes
    d x average + (1 - d) x weights with d = min(decay, (1 + n) / (10 + n)) (diffusers' EMAModel), so
    the early average is not stuck at the untrained start. Default: 0.999."""
    start_step: int = Field(default=0, ge=0, le=10_000_000)
    """Optimizer steps before averaging starts; until then the average is the weights. Default: 0."""


class EarlyStop(ApiModel):
    """End training when the validation loss stops improving."""

    patience: int = Field(default=0, ge=0, le=1000)
    """Stop after this many evaluations in a row without a new best validation loss; 0: never stop
    early. Evaluations happen at epoch ends and at checkpoints.everySteps; with patience set each
    evaluation also writes its checkpoint, so selectedCheckpoint auto can pick the best. The job then
    ends Succeeded with reason StoppedEarly. Needs validation images (dataset.validationSplit).
    Default: 0."""
    min_delta: float = Field(default=0.0, ge=0.0, le=100.0)
    """How much lower than the best so far a loss must be to count as an improvement. Default: 0."""


class Training(ApiModel):
    """How long and how the adapter is trained."""

    steps: Annotated[int, Field(ge=1, le=10_000_000)] | Literal["auto"] = "auto"
    """An integer from 1 to 10000000 (optimizer steps) or the string auto (int-or-string); auto is
    counted by stepsPreset. A number is taken as written: each step trains batchSize x
    gradientAccumulation x GPUs images, so more GPUs see more images in the same steps; auto divides
    its count by the GPUs (the same training, sooner). The trainer's log, status.progress.plan and
    `lora-train upload --dry-run` print how the steps were counted.
    Default: auto."""
    steps_preset: Literal["scenario", "tensorart"] = Field(default="scenario")
    """How steps auto is counted. scenario: the hosted trainers' per-image counts, SD1.5 175 per
    image, SDXL 350 per image (75 per image above 30), Flux 500 + 50 per image; repeats and
    epochs do not change the length (epochs cut it into equal slices; repeats.json only weights
    images against each other). tensorart: images x repeats x epochs / (batchSize x
    gradientAccumulation): an epoch is one pass over the data in which each image is seen
    repeats times (regularization images, drawn in every pass, are added to the images).
    Both are divided by the number of GPUs. Default: scenario."""
    epochs: int = Field(default=10, ge=1, le=1000)
    """Epochs: the steps are cut into this many equal slices, with checkpoints and previews at
    each end. With stepsPreset tensorart an epoch is one pass over the data; with scenario or a
    step count it lasts steps / epochs steps, whatever that is in passes. Default: 10."""
    batch_size: int = Field(default=1, ge=1, le=64)
    """Images per micro-batch on each GPU. With N GPUs training is data parallel: a step takes one
    micro-batch per GPU (global batch = batchSize x gradientAccumulation x N) and the gradients
    are averaged, so auto steps are divided by N. The learning rates are not scaled with N: an
    averaged gradient has the size of a one-GPU step's, with less noise, and kohya's and
    diffusers' scripts leave them as set too; raise them yourself (about sqrt(N)) if wanted.
    Default: 1."""
    gradient_accumulation: int = Field(default=1, ge=1, le=64)
    """Micro-batches summed per optimizer step. Default: 1."""
    unet_learning_rate: float = Field(default=1e-4, gt=0.0, le=1.0)
    """Learning rate of the denoiser (UNet or Flux transformer) adapter. Default: 1e-4."""
    text_encoder_learning_rate: float = Field(default=5e-5, ge=0.0, le=1.0)
    """Learning rate of the text-encoder adapter; 0 freezes the text encoder. Default: 5e-5."""
    text_encoder_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of the steps (from the start) that also train the text encoder. Default: 0."""
    lr_scheduler: LrScheduler = Field(default_factory=LrScheduler)
    """The learning-rate schedule."""
    optimizer: Optimizer = Field(default_factory=Optimizer)
    """The optimizer."""
    max_grad_norm: float = Field(default=1.0, ge=0.0, le=1000.0)
    """Gradient clipping norm; 0 turns it off. Default: 1.0."""
    shuffle_tags: bool = Field(default=False)
    """Shuffle the comma-separated tags of each caption every time it is seen. Default: false."""
    keep_tokens: int = Field(default=0, ge=0, le=100)
    """Leading tags of the composed caption (captionPrefix first) kept in place when shuffling, and
    kept when captionDropout drops a caption (the trigger). Default: 0."""
    caption_dropout: float = Field(default=0.0, ge=0.0, le=1.0)
    """Probability of training a sample with its caption dropped: only the first keepTokens tags
    remain (none by default: an empty caption). Default: 0."""
    noise_offset: float = Field(default=0.0, ge=0.0, le=1.0)
    """Offset noise strength (helps very dark / bright images). Default: 0."""
    multires_noise: MultiresNoise = Field(default_factory=MultiresNoise)
    """Multi-resolution noise."""
    min_snr_gamma: float = Field(default=0.0, ge=0.0, le=100.0)
    """Min-SNR loss weighting gamma; 0 turns it off (ignored for Flux). Default: 0."""
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    """Seed of everything random: same seed and data give the same adapter on CPU. Default: 42."""
    mixed_precision: MixedPrecision = Field(default=MixedPrecision.BF16)
    """no, fp16 or bf16 (falls back to no on CPU). Default: bf16."""
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(default="auto")
    """Trade compute for memory; auto turns it on when memory would not suffice. Default: auto."""
    base_quantization: Literal["auto", "none", "fp8", "nf4"] = Field(default="none")
    """Store the frozen denoiser's linear weights quantized, to train big bases on smaller GPUs; the adapter
    stays in full precision and its files are the same. fp8: torchao float8 weights with a scale per row
    (about half of bf16); nf4: bitsandbytes 4-bit NormalFloat (about a quarter; needs a CUDA GPU). auto: the
    first of none, fp8, nf4 whose estimated peak with gradient checkpointing fits 90% of the GPU the pod
    holds (none on CPU or for a single-file base; with offload blocks, none or fp8 by the offloaded peak).
    Default: none."""
    offload: Literal["auto", "none", "blocks"] = Field(default="none")
    """Keep the frozen denoiser's weights in host memory and bring each layer onto the GPU only while it runs
    (diffusers group offloading, layer by layer, the next layer's copy overlapped with the current one's compute
    on a CUDA stream); the adapter stays on the GPU. Trades step time for memory: Flux.2 dev on one 80 GB GPU.
    When on, gradient checkpointing is on (offload needs it) and compile off (blocks with gradientCheckpointing
    off or compile on is refused); not with network.dora (DoRA reads the base weights outside their layers),
    baseQuantization nf4 or several GPUs. auto: blocks when
    the estimated peak with gradient checkpointing does not fit 90% of the GPU the pod holds (none on CPU or for
    a single-file base). Default: none."""
    cache_latents: bool = Field(default=True)
    """Encode images once and reuse the latents when augmentation allows. Default: true."""
    ema: Ema = Field(default_factory=Ema)
    """Exponential moving average of the adapter weights (previews and a second copy of each checkpoint)."""
    early_stop: EarlyStop = Field(default_factory=EarlyStop)
    """Stop when the validation loss has not improved for a number of evaluations."""
    flow: Flow = Field(default_factory=Flow)
    """Timestep sampling, shift, loss weighting and training guidance of flow-matching families."""
    timestep_bias: TimestepBias = Field(default_factory=TimestepBias)
    """Which timesteps the epsilon / v families (sd15, sdxl) draw more or less often."""
    compile: Literal["auto", "on", "off"] = Field(default="auto")
    """torch.compile the denoiser's repeated blocks (regional compilation: seconds to a minute of
    compiling once, then faster steps); auto turns it on on a GPU. Default: auto."""


def offload_problems(spec: Any) -> list[tuple[str, str]]:
    """(field, message) when training.offload blocks meets an option it cannot run with (auto defers to the
    trainer, which only picks blocks where it can)."""
    training = spec.training
    if training is None or training.offload != "blocks":
        return []
    field = "training.offload"
    if spec.network is not None and spec.network.dora:
        return [(field, "blocks cannot train network.dora (DoRA reads each base weight outside its layer's "
                        "forward, where offloading has it in host memory); leave offload none or dora off")]
    if training.base_quantization == "nf4":
        return [(field, "blocks cannot move bitsandbytes nf4 weights; use baseQuantization fp8 or none with it")]
    if training.gradient_checkpointing == "off":
        return [(field, "blocks needs gradient checkpointing (without it every layer's weights stay on the GPU "
                        "until the backward pass); set gradientCheckpointing auto or on")]
    if training.compile == "on":
        return [(field, "blocks cannot run compiled blocks (the offloading hooks break the graphs); "
                        "set compile auto or off")]
    return []


class Network(ApiModel):
    """Size of the LoRA / LoCon / LoHa / LoKr adapter."""

    dim: int = Field(default=16, ge=1, le=1024)
    """Rank of the linear (attention and MLP) adapters (LoHa: of each of its two products; LoKr: of its
    larger Kronecker factor). Default: 16."""
    alpha: float = Field(default=8.0, gt=0.0, le=1024.0)
    """Scale numerator: the adapter output is scaled by alpha / dim. Default: 8."""
    conv_dim: int = Field(default=0, ge=0, le=512)
    """Rank of the convolution adapters (locon, loha, lokr on families with convolution layers); 0 means none.
    Default: 0."""
    conv_alpha: float = Field(default=0.0, ge=0.0, le=512.0)
    """Scale numerator of the convolution adapters; 0 means convDim. Default: 0."""
    dropout: float = Field(default=0.0, ge=0.0, le=1.0)
    """Dropout inside the adapter (LoHa / LoKr: rank dropout, of rows of the update). Default: 0."""
    dora: bool = Field(default=False)
    """DoRA (type lora or locon): each adapted layer also trains a magnitude per output row, and its weight
    becomes that magnitude times the row's direction (W + update) / ||W + update||. The kohya file holds it
    as dora_scale on the output axis, which ComfyUI loads; A1111 and Forge read dora_scale on the input axis
    only and cannot. The diffusers folder loads with load_lora_weights. Default: false."""


class Embedding(ApiModel):
    """A textual-inversion embedding (type: embedding)."""

    token: str = Field(default="<concept>", min_length=1, max_length=40, pattern=r"^\S+$")
    """The new token the embedding is bound to in prompts. Default: <concept>."""
    initial_phrase: str = Field(min_length=1, max_length=8)
    """Word(s) whose embedding initialises the new vectors, at most 8 characters."""
    vectors: int = Field(default=4, ge=1, le=75)
    """Vectors per token. Default: 4."""

"""The one interface every model family implements, and the parts families share.

The training loop talks to a family only through `Family`: load the components,
encode prompts and images, make a noisy input and its target, predict, weight
the loss, and build a pipeline for previews. A family is a small class; the loop
never branches on which one it holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lora_operator.api import Previews, Sampler, Training

from ..errors import ModelError
from ..quantize import denoiser_load_kwargs
from ..singlefile import SingleFileModel

Sizes = list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]
"""Per sample: (original_size, crop_top_left, target_size), all (height, width)."""



def text_component(index: int) -> str:
    """The component name of text encoder `index` (0-based), as diffusers pipelines and LoRA files name
    it: text_encoder, text_encoder_2, text_encoder_3, ... (any count, not only two)."""
    return "text_encoder" if index == 0 else f"text_encoder_{index + 1}"


def text_index(component: str) -> int:
    """The inverse of `text_component`: text_encoder_3 -> 2.

    Raises:
        ValueError: not a text-encoder component name.
    """
    if component == "text_encoder":
        return 0
    prefix, _, number = component.rpartition("_")
    if prefix != "text_encoder" or not number.isdigit() or int(number) < 2:
        raise ValueError(f"{component}: not a text encoder component")
    return int(number) - 1


@dataclass(frozen=True)
class KohyaLayer:
    """Where the LoRA of one adapted module goes in a kohya file.

    Attributes:
        name: The kohya layer name, e.g. ``lora_unet_double_blocks_0_img_attn_qkv``.
        part: Index of this module among the modules fused into the layer (q, k, v of a qkv: 0, 1, 2).
        parts: How many modules the layer fuses (1: none).
    """

    name: str
    part: int = 0
    parts: int = 1


@dataclass(frozen=True)
class ModelVersion:
    """What kohya's and the ModelSpec metadata call a base model (values as sd-scripts writes them).

    Attributes:
        kohya: ``ss_base_model_version``, e.g. sd_v1, sdxl_base_v1-0, flux1.
        architecture: ``modelspec.architecture`` without the adapter suffix, e.g. stable-diffusion-v1.
        implementation: ``modelspec.implementation`` of a LoRA for this model.
        prediction_type: ``modelspec.prediction_type`` (epsilon or v); None for flow models.
        v2: ``ss_v2``: an SD 2.x base.
    """

    kohya: str
    architecture: str
    implementation: str
    prediction_type: str | None = None
    v2: bool = False


@dataclass
class Components:
    """The loaded parts of a base model.

    Attributes:
        denoiser: The UNet (SD1.5, SDXL) or transformer (Flux).
        vae: The image autoencoder (always frozen).
        text_encoders: Text encoders in pipeline order (text_encoder, text_encoder_2).
        tokenizers: Their tokenizers, same order.
        noise_scheduler: The training noise scheduler (DDPM or flow matching).
        folder: The model folder the parts came from.
    """

    denoiser: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    tokenizers: list[Any]
    noise_scheduler: Any
    folder: Path | SingleFileModel
    extra: dict[str, Any] = field(default_factory=dict)

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Every model part, for moving to a device and freezing."""
        return [self.denoiser, self.vae, *self.text_encoders]


class Family(Protocol):
    """What the loop needs from a model family.

    Optional, for families whose text encoders are large frozen LLMs (Flux.2): ``release_text_encoders = True``
    makes the loop encode every text of the run once and move the encoders off the device on every device,
    CPU included (`textpark.park_text_encoders`; other families only on a GPU). A family may give
    ``prompt_kwargs(cond, negative)``, the pipeline arguments (prompt_embeds, ...) of a cached prompt and of the
    empty prompt: previews then take cached conditioning instead of calling the parked encoders.

    Optional, for edit families whose text encoder also reads the control image (Qwen-Image-Edit):
    ``text_reads_control = True``; its ``encode_prompts`` then takes ``controls`` (a PIL image per prompt, cut
    and flipped as the pair trains) and the Encoder caches text per (caption, control) instead of per caption.
    """

    family: str
    """The name of its row in the family table (`lora_operator.api.families`)."""
    denoiser_name: str
    """Prefix of the denoiser in diffusers LoRA files: unet or transformer."""
    default_sampler: Sampler
    preview_cfg: str | None
    """The Previews field that is the scale of the preview pipeline's classifier-free guidance, the guidance
    the negative prompt takes part in: ``guidance``, ``true_guidance`` (where previews.guidance is
    distilled guidance and the pipeline's ``true_cfg_scale`` is separate), or None (it has none)."""
    preview_negative: bool
    """The preview pipeline takes previews.negativePrompt (when its `preview_cfg` scale is above 1)."""
    default_preview_guidance: float
    """previews.guidance where the job leaves it unset (`preview_guidance`)."""
    denoiser_targets: list[str]
    """Linear layers of the denoiser that get a LoRA (peft target_modules: names or name suffixes)."""
    denoiser_exclude: str | None
    """Denoiser modules that never get a LoRA although a target matches (a regex on the full module name,
    peft's exclude_modules); None: none."""
    kohya_network_module: str
    """``ss_network_module`` of a kohya file: the sd-scripts network that trains this family's LoRA."""
    conv_targets: list[str]
    """Convolution layers that get a LoCon adapter (empty: the family has none)."""
    text_encoder_targets: list[str]
    trainable_text_encoders: int
    """How many leading text encoders may get a LoRA or an embedding."""
    embedding_keys: tuple[str, ...]
    """Tensor names of an embedding file, one per trainable text encoder (A1111 / ComfyUI: emb_params for
    one, clip_l / clip_g for SDXL's two)."""
    compile_mode: str | None
    """torch.compile mode of the repeated blocks on a GPU (None: the default mode); see speed.compile_mode."""
    compile_mode_batch_1: str | None
    """The mode at one image per micro-batch where it differs from `compile_mode` (None: the same)."""
    compile_blocks: tuple[str, ...] | None
    """The block classes regional compilation compiles (None: the denoiser's own ``_repeated_blocks``);
    see speed.compile_blocks."""
    activation_gib_per_megapixel: float
    """Saved activations of a bf16 training step per image megapixel, without gradient checkpointing
    (gradientCheckpointing auto compares the estimate with the GPU's memory)."""

    def load(self, folder: Path | SingleFileModel, dtype: torch.dtype) -> Components:
        """Load the components from a diffusers folder or a single-file checkpoint, each part through
        `load_part` (raises ModelError)."""

    def kohya_layer(self, component: str, module: str) -> KohyaLayer:
        """The kohya layer of an adapted module (component: unet, transformer, text_encoder, ...).

        Raises:
            ValueError: the module has no kohya name that ComfyUI, A1111, Forge and InvokeAI load.
        """

    def model_version(self, parts: Components) -> ModelVersion:
        """What LoRA metadata calls this base model."""

    def encode_prompts(self, parts: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Conditioning tensors, batched on dim 0."""

    def encode_images(self, parts: Components, pixels: torch.Tensor) -> torch.Tensor:
        """Latents (scaled) of images in [-1, 1], shape (B, 3, H, W)."""

    def configure(self, parts: Components, training: Training, previews: Previews | None = None) -> None:
        """Take the job's training options that shape the objective (training.flow of flow families),
        once, after `load` (raises ConfigError for one the loaded base cannot follow, or for a `previews`
        setting it would ignore that only the loaded base shows: `check_previews` runs before loading)."""

    def sample_timesteps(self, parts: Components, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random training timesteps, one per latent (their shape may choose them: a resolution shift)."""

    def fixed_timesteps(self, parts: Components, n: int, latent_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Evenly spread timesteps (validation loss) for latents of `latent_shape`."""

    def noisy_and_target(
        self, parts: Components, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noised latents and the regression target of the model."""

    def predict(
        self, parts: Components, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
        sizes: Sizes, control: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoiser output, shaped like the target.

        `control`: the latents of the pair's control images (`encode_images`, shaped like `noisy`), given
        only to edit families (their row's ``edit``) when the dataset has pairs; an edit family joins
        them to its input as its pipeline does at inference, and predicts for the target tokens only.
        """

    def loss_weights(self, parts: Components, timesteps: torch.Tensor, min_snr_gamma: float) -> torch.Tensor:
        """Per-sample loss weights (min-SNR or ones)."""

    def pipeline(self, parts: Components) -> Any:
        """A diffusers pipeline sharing the (adapted) components, for previews."""

    def pipeline_kwargs(self, previews: Previews) -> dict[str, Any]:
        """Extra call arguments of the pipeline for previews."""

    def edit_inputs(self, control: Any, size: tuple[int, int]) -> dict[str, Any]:
        """Edit families only: the pipeline call arguments that hand it `control` (a PIL image, the control
        image of a held-out pair) to edit into an image of `size` (height, width)."""

def refuse_distilled(family: str, folder: Path) -> None:
    """Refuse a model folder of `family`'s distilled variant (its row's ``distilled``): the folder's path
    (a file:// path, the Hugging Face cache's ``models--org--name``) or the name any of its configs was saved
    from (``_name_or_path``) names it. An s3:// model is cached under a hash: the operator checks its URI.

    Raises:
        ModelError: naming the base variant to train on instead.
    """
    from lora_operator.api.families import family_row

    variant = family_row(family).distilled
    if variant is None:
        return
    names = [str(folder.resolve())]
    for config in [folder / "model_index.json", *folder.glob("*/config.json")]:
        try:
            names.append(str(json.loads(config.read_text()).get("_name_or_path", "")))
        except (OSError, ValueError):
            continue
    for name in names:
        if problem := variant.problem(name):
            raise ModelError(": ".join(problem))


def load_part(loader: Any, folder: Path | SingleFileModel, subfolder: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(folder, subfolder=...)`, turning failures into ModelError; from a single-file
    checkpoint through diffusers' single-file loaders (`SingleFileModel.load_part`). The denoiser gets the
    open training.baseQuantization config (`quantize.quantized_denoiser`)."""
    kwargs.update(denoiser_load_kwargs(subfolder))
    if isinstance(folder, SingleFileModel):
        return folder.load_part(loader, subfolder, **kwargs)
    try:
        return loader.from_pretrained(folder, subfolder=subfolder, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"baseModel.uri: cannot load {subfolder} from {folder}: {err}".splitlines()[0]) from err


def load_one_encoder_model(folder: Path, dtype: torch.dtype, denoiser: Any, vae: Any, text_encoder: Any,
                           tokenizer: Any) -> Components:
    """The components of a diffusers folder with one text encoder (transformer, vae, text_encoder, tokenizer
    and a FlowMatchEulerDiscreteScheduler): Z-Image's, Qwen-Image's and Chroma's layout, given their classes."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return Components(
        denoiser=load_part(denoiser, folder, "transformer", torch_dtype=dtype),
        vae=load_part(vae, folder, "vae", torch_dtype=dtype),
        text_encoders=[load_part(text_encoder, folder, "text_encoder", torch_dtype=dtype)],
        tokenizers=[load_part(tokenizer, folder, "tokenizer")],
        noise_scheduler=load_part(FlowMatchEulerDiscreteScheduler, folder, "scheduler"),
        folder=folder,
    )


def tokenize(tokenizer: Any, prompts: list[str], max_length: int | None = None) -> torch.Tensor:
    """Token ids padded / truncated to the tokenizer's (or the given) length."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def vae_encode(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Scaled latents: the posterior mean (deterministic, so latents can be cached)."""
    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def kohya_text_layer(prefixes: tuple[str, ...], component: str, module: str) -> KohyaLayer:
    """The kohya layer of a CLIP text-encoder module: ``<prefix>_text_model_encoder_layers_0_self_attn_q_proj``.

    Args:
        prefixes: The family's kohya prefix per text encoder, in pipeline order (sd-scripts: lora_te for
            SD1.5's single encoder, lora_te1 / lora_te2 for SDXL and Flux).
        component: text_encoder or text_encoder_2.
        module: The module name inside the encoder.
    """
    index = text_index(component)
    if index >= len(prefixes):
        raise ValueError(f"{component}: no kohya prefix (the family names {len(prefixes)} text encoder(s))")
    # kohya names CLIP layers from the transformers layout of CLIPTextModelWithProjection (text_model...);
    # transformers 5's CLIPTextModel has no text_model level.
    path = module if module.startswith("text_model.") else "text_model." + module
    return KohyaLayer(f"{prefixes[index]}_{path.replace('.', '_')}")


def preview_guidance(family: Family, previews: Previews) -> float:
    """The job's previews.guidance, else the family's default. Unset is None in the API, not a default
    value, because the pod's resolved spec spells every field out (a set field and a default one look
    alike there)."""
    return family.default_preview_guidance if previews.guidance is None else previews.guidance

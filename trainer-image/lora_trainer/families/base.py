"""The one interface every model family implements, and the parts families share.

The training loop talks to a family only through `Family`: load the components,
encode prompts and images, make a noisy input and its target, predict, weight
the loss, and build a pipeline for previews. A family is a small class; the loop
never branches on which one it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lora_operator.api import ModelFamily, Previews, Sampler

from ..errors import ModelError

Sizes = list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]
"""Per sample: (original_size, crop_top_left, target_size), all (height, width)."""


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
    folder: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Every model part, for moving to a device and freezing."""
        return [self.denoiser, self.vae, *self.text_encoders]


class Family(Protocol):
    """What the loop needs from a model family."""

    family: ModelFamily
    denoiser_name: str
    """Prefix of the denoiser in diffusers LoRA files: unet or transformer."""
    kohya_prefix: str
    """Prefix of the denoiser keys in kohya files: lora_unet or lora_transformer."""
    default_sampler: Sampler
    denoiser_targets: list[str]
    """Linear layers of the denoiser that get a LoRA."""
    conv_targets: list[str]
    """Convolution layers that get a LoCon adapter (empty: the family has none)."""
    text_encoder_targets: list[str]
    trainable_text_encoders: int
    """How many leading text encoders may get a LoRA or an embedding."""
    compile_mode: str | None
    """torch.compile mode of the repeated blocks on a GPU (None: the default mode); see speed.compile_mode."""
    activation_gib_per_megapixel: float
    """Saved activations of a bf16 training step per image megapixel, without gradient checkpointing
    (gradientCheckpointing auto compares the estimate with the GPU's memory)."""

    def load(self, folder: Path, dtype: torch.dtype) -> Components:
        """Load the components from a diffusers folder (raises ModelError)."""

    def encode_prompts(self, parts: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Conditioning tensors, batched on dim 0."""

    def encode_images(self, parts: Components, pixels: torch.Tensor) -> torch.Tensor:
        """Latents (scaled) of images in [-1, 1], shape (B, 3, H, W)."""

    def sample_timesteps(self, parts: Components, n: int, generator: torch.Generator) -> torch.Tensor:
        """Random training timesteps."""

    def fixed_timesteps(self, parts: Components, n: int) -> torch.Tensor:
        """Evenly spread timesteps (validation loss)."""

    def noisy_and_target(
        self, parts: Components, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noised latents and the regression target of the model."""

    def predict(
        self, parts: Components, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
        sizes: Sizes,
    ) -> torch.Tensor:
        """The denoiser output, shaped like the target."""

    def loss_weights(self, parts: Components, timesteps: torch.Tensor, min_snr_gamma: float) -> torch.Tensor:
        """Per-sample loss weights (min-SNR or ones)."""

    def pipeline(self, parts: Components) -> Any:
        """A diffusers pipeline sharing the (adapted) components, for previews."""

    def pipeline_kwargs(self, previews: Previews) -> dict[str, Any]:
        """Extra call arguments of the pipeline for previews."""


def load_part(loader: Any, folder: Path, subfolder: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(folder, subfolder=...)`, turning failures into ModelError."""
    try:
        return loader.from_pretrained(folder, subfolder=subfolder, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"baseModel.uri: cannot load {subfolder} from {folder}: {err}".splitlines()[0]) from err


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

"""The rectified-flow objective the flow-matching families share (Flux.1 and the 2025 families).

A family class lists `FlowMatching` first among its bases and gets timestep sampling, the
noised input and velocity target, and loss weights; it overrides `shift` when its scheduler
shifts the sigmas toward noise (SD3-style ``shift * s / (1 + (shift - 1) * s)``), or inherits
`scheduler_shift`, which reads the shift from the model's FlowMatchEulerDiscreteScheduler config:
its fixed ``shift``, or, with ``use_dynamic_shifting``, the shift the pipeline uses at the latents'
size (``mu`` interpolated between base_shift and max_shift over the image token count).
"""

from __future__ import annotations

import math

import torch

from .base import Components

LatentShape = tuple[int, ...]
"""(B, C, *spatial) of a batch of latents: the size a resolution-dependent shift is computed at."""


def shifted(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Sigmas moved toward 1 (more noise) by `shift`, as FlowMatchEulerDiscreteScheduler does; 1: unchanged."""
    return sigmas if shift == 1.0 else shift * sigmas / (1 + (shift - 1) * sigmas)


def image_tokens(latent_shape: LatentShape, patch: int = 2) -> int:
    """Transformer tokens of one latent image: (H / patch) x (W / patch), the last two dimensions
    (a video VAE's single frame, (B, C, 1, H, W), counts like an image's (B, C, H, W))."""
    return (latent_shape[-2] // patch) * (latent_shape[-1] // patch)


def scheduler_shift(config: dict, latent_shape: LatentShape | None) -> float:
    """The sigma shift a FlowMatchEulerDiscreteScheduler `config` applies at latents of `latent_shape`.

    Fixed ``shift`` unless ``use_dynamic_shifting``; then the pipelines' ``calculate_shift``: ``mu``
    linear in the image token count from (base_image_seq_len, base_shift) to (max_image_seq_len,
    max_shift), and the shift is exp(mu) (``time_shift_type`` exponential, the default) or mu (linear).
    Without a shape (nothing to size it at) the dynamic shift is taken at ``base_image_seq_len``.
    """
    if not config.get("use_dynamic_shifting"):
        return float(config.get("shift", 1.0))
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    tokens = image_tokens(latent_shape) if latent_shape else base_len
    mu = base_shift + (max_shift - base_shift) * (tokens - base_len) / (max_len - base_len)
    return mu if config.get("time_shift_type", "exponential") == "linear" else math.exp(mu)


class FlowMatching:
    """x_t = (1 - s) x + s noise; the model predicts the velocity noise - x."""

    def shift(self, parts: Components, latent_shape: LatentShape | None = None) -> float:
        """The sigma shift of training timesteps at latents of `latent_shape` (1.0: none; Flux.1 trains
        unshifted)."""
        return 1.0

    def sample_timesteps(self, parts: Components, n: int, generator: torch.Generator,
                         latent_shape: LatentShape | None = None) -> torch.Tensor:
        """Sigmas in (0, 1): the sigmoid of a standard normal (logit-normal sampling, SD3 / Flux), shifted."""
        return shifted(torch.sigmoid(torch.randn(n, generator=generator)), self.shift(parts, latent_shape))

    def fixed_timesteps(self, parts: Components, n: int, latent_shape: LatentShape | None = None) -> torch.Tensor:
        """`n` sigmas spread evenly over (0.1, 0.9), shifted like the training ones."""
        return shifted(torch.linspace(0.1, 0.9, n), self.shift(parts, latent_shape))

    def noisy_and_target(
        self, parts: Components, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear interpolation x_t = (1 - s) x + s noise (latents of any rank); the target is noise - x."""
        sigma = timesteps.to(latents.device, latents.dtype).view(-1, *[1] * (latents.dim() - 1))
        return (1 - sigma) * latents + sigma * noise, noise - latents

    def loss_weights(self, parts: Components, timesteps: torch.Tensor, min_snr_gamma: float) -> torch.Tensor:
        """Ones: min-SNR does not apply to flow matching."""
        return torch.ones(len(timesteps))


class SchedulerShiftedFlow(FlowMatching):
    """Flow matching at the shift of the model's own scheduler config (`scheduler_shift`): its fixed shift,
    or its dynamic shift at the batch's latent size (Z-Image, Qwen-Image)."""

    def shift(self, parts: Components, latent_shape: LatentShape | None = None) -> float:
        """The scheduler config's shift at latents of `latent_shape`."""
        return scheduler_shift(parts.noise_scheduler.config, latent_shape)

"""The rectified-flow objective the flow-matching families share (Flux.1 and the 2025 families).

A family class lists `FlowMatching` first among its bases and gets timestep sampling, the
noised input and velocity target, and loss weights; it overrides `shift` when its scheduler
shifts the sigmas toward noise (SD3-style ``shift * s / (1 + (shift - 1) * s)``), or inherits
`scheduler_shift`, which reads the shift from the model's FlowMatchEulerDiscreteScheduler config:
its fixed ``shift``, or, with ``use_dynamic_shifting``, the shift the pipeline uses at the latents'
size (``mu`` interpolated between base_shift and max_shift over the image token count). The job's
``training.flow`` (`configure`) chooses the sampling density, the shift and the loss weighting,
through diffusers' own SD3 training helpers.
"""

from __future__ import annotations

import math

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from lora_operator.api import Flow, Previews, Training

from ..errors import ConfigError
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


def resolution_mu(config, tokens: int) -> float:
    """The scheduler's dynamic-shift mu of an image of `tokens` latent tokens: linear from base_shift at
    base_image_seq_len to max_shift at max_image_seq_len (the pipelines' own calculate_shift)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                           config.get("base_shift", 0.5), config.get("max_shift", 1.15))


def scheduler_shift(config: dict, latent_shape: LatentShape | None) -> float:
    """The sigma shift a FlowMatchEulerDiscreteScheduler `config` applies at latents of `latent_shape`.

    Fixed ``shift`` unless ``use_dynamic_shifting``; then ``mu`` of `resolution_mu` at the image token
    count, and the shift is exp(mu) (``time_shift_type`` exponential, the default) or mu (linear).
    Without a shape (nothing to size it at) the dynamic shift is taken at ``base_image_seq_len``.
    """
    if not config.get("use_dynamic_shifting"):
        return float(config.get("shift", 1.0))
    tokens = image_tokens(latent_shape) if latent_shape else config.get("base_image_seq_len", 256)
    mu = resolution_mu(config, tokens)
    return mu if config.get("time_shift_type", "exponential") == "linear" else math.exp(mu)


class FlowMatching:
    """x_t = (1 - s) x + s noise; the model predicts the velocity noise - x."""

    default_preview_guidance = 7.0
    patch_size = 2
    """Latent pixels per token side (the resolution shift counts tokens: Flux packs 2x2 patches)."""
    flow: Flow = Flow()
    """The job's flow options (`configure`); the defaults until then."""

    def shift(self, parts: Components, latent_shape: LatentShape | None = None) -> float:
        """The sigma shift of training timesteps at latents of `latent_shape` (1.0: none; Flux.1 trains
        unshifted)."""
        return 1.0

    def configure(self, parts: Components, training: Training, previews: Previews | None = None) -> None:
        """Take training.flow; a resolution shift needs a scheduler that defines one.

        Raises:
            ConfigError: resolutionShift with a scheduler that has no base_shift / max_shift.
        """
        config = parts.noise_scheduler.config
        needed = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")
        if training.flow.resolution_shift and any(config.get(k) is None for k in needed):
            raise ConfigError("training.flow.resolutionShift: the base model's scheduler "
                              f"({type(parts.noise_scheduler).__name__}) defines no {', '.join(needed)}")
        self.flow = training.flow

    def sample_timesteps(self, parts: Components, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Sigmas in (0, 1), one per latent, drawn as training.flow.sampling says (diffusers'
        compute_density_for_timestep_sampling), then shifted: fixed, by resolution or the family's."""
        f = self.flow
        sigmas = compute_density_for_timestep_sampling(
            f.sampling.value, len(latents), logit_mean=f.logit_mean, logit_std=f.logit_std,
            mode_scale=f.mode_scale, generator=generator,
        )
        if f.resolution_shift:
            mu = resolution_mu(parts.noise_scheduler.config, image_tokens(latents.shape, self.patch_size))
            return parts.noise_scheduler.time_shift(mu, 1.0, sigmas)
        return shifted(sigmas, f.shift if f.shift is not None else self.shift(parts, tuple(latents.shape)))

    def fixed_timesteps(self, parts: Components, n: int, latent_shape: LatentShape | None = None) -> torch.Tensor:
        """`n` sigmas spread evenly over (0.1, 0.9), shifted by the family's shift at `latent_shape`
        (validation losses stay comparable whatever a job's flow options)."""
        return shifted(torch.linspace(0.1, 0.9, n), self.shift(parts, latent_shape))

    def noisy_and_target(
        self, parts: Components, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear interpolation x_t = (1 - s) x + s noise (latents of any rank); the target is noise - x."""
        sigma = timesteps.to(latents.device, latents.dtype).view(-1, *[1] * (latents.dim() - 1))
        return (1 - sigma) * latents + sigma * noise, noise - latents

    def loss_weights(self, parts: Components, timesteps: torch.Tensor, min_snr_gamma: float) -> torch.Tensor:
        """training.flow.weighting of each sigma (diffusers' compute_loss_weighting_for_sd3; none: ones);
        min-SNR does not apply to flow matching."""
        return compute_loss_weighting_for_sd3(self.flow.weighting.value, timesteps.float().cpu())


class SchedulerShiftedFlow(FlowMatching):
    """Flow matching at the shift of the model's own scheduler config (`scheduler_shift`): its fixed shift,
    or its dynamic shift at the batch's latent size (Z-Image, Qwen-Image)."""

    def shift(self, parts: Components, latent_shape: LatentShape | None = None) -> float:
        """The scheduler config's shift at latents of `latent_shape`."""
        return scheduler_shift(parts.noise_scheduler.config, latent_shape)

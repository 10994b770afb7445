"""The rectified-flow objective the flow-matching families share (Flux.1 and the 2025 families).

A family class lists `FlowMatching` first among its bases and gets timestep sampling, the
noised input and velocity target, and loss weights; it overrides `shift` when its scheduler
shifts the sigmas toward noise (SD3-style ``shift * s / (1 + (shift - 1) * s)``).
"""

from __future__ import annotations

import torch

from .base import Components


def shifted(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Sigmas moved toward 1 (more noise) by `shift`, as FlowMatchEulerDiscreteScheduler does; 1: unchanged."""
    return sigmas if shift == 1.0 else shift * sigmas / (1 + (shift - 1) * sigmas)


class FlowMatching:
    """x_t = (1 - s) x + s noise; the model predicts the velocity noise - x."""

    def shift(self, parts: Components) -> float:
        """The sigma shift of training timesteps (1.0: none; Flux.1 trains unshifted)."""
        return 1.0

    def sample_timesteps(self, parts: Components, n: int, generator: torch.Generator) -> torch.Tensor:
        """Sigmas in (0, 1): the sigmoid of a standard normal (logit-normal sampling, SD3 / Flux), shifted."""
        return shifted(torch.sigmoid(torch.randn(n, generator=generator)), self.shift(parts))

    def fixed_timesteps(self, parts: Components, n: int) -> torch.Tensor:
        """`n` sigmas spread evenly over (0.1, 0.9), shifted like the training ones."""
        return shifted(torch.linspace(0.1, 0.9, n), self.shift(parts))

    def noisy_and_target(
        self, parts: Components, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear interpolation x_t = (1 - s) x + s noise (latents of any rank); the target is noise - x."""
        sigma = timesteps.to(latents.device, latents.dtype).view(-1, *[1] * (latents.dim() - 1))
        return (1 - sigma) * latents + sigma * noise, noise - latents

    def loss_weights(self, parts: Components, timesteps: torch.Tensor, min_snr_gamma: float) -> torch.Tensor:
        """Ones: min-SNR does not apply to flow matching."""
        return torch.ones(len(timesteps))

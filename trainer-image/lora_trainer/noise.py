"""Training noise: Gaussian plus optional offset noise and multi-resolution (pyramid) noise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lora_operator.api import Training

from .speed import upload

INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}
"""F.interpolate's mode for latents with 1, 2 or 3 spatial dimensions."""


def offset_noise(noise: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Add a per-channel constant (Guttenberg 2023): lets the model learn very dark / bright images.

    Latents are (B, C, *spatial) with any number of spatial dimensions (images: 2, video: 3).
    """
    b, c = noise.shape[:2]
    shape = (b, c, *[1] * (noise.dim() - 2))
    return noise + strength * upload(torch.randn(shape, generator=generator), noise.device, noise.dtype)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float, generator: torch.Generator) -> torch.Tensor:
    """Multi-resolution noise (Whitaker 2023): upsampled low-resolution noise at decaying weights.

    The result is renormalised to unit variance, as kohya does. Every spatial dimension of
    (B, C, *spatial) is scaled down alike (bilinear for 2, trilinear for 3; linear for 1).
    """
    b, c, *spatial = noise.shape
    mode = INTERPOLATION[len(spatial)]
    out = noise.clone()
    for i in range(iterations):
        r = 2 + int(torch.rand(1, generator=generator).item() * 2)  # scale factor in [2, 4)
        low_size = [max(1, int(side / r**i)) for side in spatial]
        low = upload(torch.randn(b, c, *low_size, generator=generator), noise.device, noise.dtype)
        out = out + F.interpolate(low, size=tuple(spatial), mode=mode, align_corners=False) * discount**i
        if all(side == 1 for side in low_size):
            break
    return out / out.std()


def make_noise(latents: torch.Tensor, training: Training, generator: torch.Generator) -> torch.Tensor:
    """The noise of one step, shaped like `latents`, drawn from `generator` (CPU)."""
    noise = upload(torch.randn(latents.shape, generator=generator), latents.device, latents.dtype)
    if training.multires_noise.iterations > 0:
        noise = pyramid_noise(noise, training.multires_noise.iterations, training.multires_noise.discount, generator)
    if training.noise_offset > 0:
        noise = offset_noise(noise, training.noise_offset, generator)
    return noise

"""Training noise: Gaussian plus optional offset noise and multi-resolution (pyramid) noise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lora_operator.api import Training

from .speed import upload


def offset_noise(noise: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Add a per-channel constant (Guttenberg 2023): lets the model learn very dark / bright images."""
    b, c = noise.shape[:2]
    return noise + strength * upload(torch.randn(b, c, 1, 1, generator=generator), noise.device, noise.dtype)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float, generator: torch.Generator) -> torch.Tensor:
    """Multi-resolution noise (Whitaker 2023): upsampled low-resolution noise at decaying weights.

    The result is renormalised to unit variance, as kohya does.
    """
    b, c, h, w = noise.shape
    out = noise.clone()
    for i in range(iterations):
        r = 2 + int(torch.rand(1, generator=generator).item() * 2)  # scale factor in [2, 4)
        sh, sw = max(1, int(h / r**i)), max(1, int(w / r**i))
        low = upload(torch.randn(b, c, sh, sw, generator=generator), noise.device, noise.dtype)
        out = out + F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False) * discount**i
        if sh == 1 and sw == 1:
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

"""Step-count presets: how many optimizer steps `training.steps: auto` means."""

from __future__ import annotations

import math

from .spec import ModelFamily


def scenario_steps(family: ModelFamily, images: int) -> int:
    """Steps the hosted trainers use for a dataset of `images` images.

    SD1.5: 175 per image. SDXL: 350 per image, 75 per image beyond the 30th.
    Flux: 500 plus 50 per image.
    """
    if images < 1:
        raise ValueError("a dataset needs at least one image")
    if family is ModelFamily.SD15:
        return 175 * images
    if family is ModelFamily.SDXL:
        return 350 * min(images, 30) + 75 * max(images - 30, 0)
    return 500 + 50 * images


def scenario_formula(family: ModelFamily, images: int) -> str:
    """`scenario_steps` written out, e.g. "175 x 6 images" (for the printed plan)."""
    if family is ModelFamily.SD15:
        return f"175 x {images} images"
    if family is ModelFamily.SDXL:
        extra = f" + 75 x {images - 30}" if images > 30 else ""
        return f"350 x {min(images, 30)}{extra} images"
    return f"500 + 50 x {images} images"


def epoch_steps(images: int, repeats: int, epochs: int, batch_size: int) -> int:
    """Steps of `epochs` passes over images x repeats samples at `batch_size` (Tensor.Art)."""
    return epochs * math.ceil(images * repeats / batch_size)

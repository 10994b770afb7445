"""Step-count presets: how many optimizer steps `training.steps: auto` means."""

from __future__ import annotations

import math

from .families import family_row


def scenario_steps(family: str, images: int) -> int:
    """Steps the hosted trainers use for a dataset of `images` images: the family's preset
    (`families.StepPreset`; SD1.5: 175 per image, SDXL: 350 per image, 75 per image beyond the
    30th, Flux: 500 plus 50 per image).

    Raises:
        UnknownFamilyError: a family without a row (no other family's preset stands in).
        ValueError: no images.
    """
    row = family_row(family)
    if images < 1:
        raise ValueError("a dataset needs at least one image")
    return row.steps.steps(images)


def scenario_formula(family: str, images: int) -> str:
    """`scenario_steps` written out, e.g. "175 x 6 images" (for the printed plan)."""
    return family_row(family).steps.formula(images)


def epoch_steps(images: int, repeats: int, epochs: int, batch_size: int) -> int:
    """Steps of `epochs` passes over images x repeats samples at `batch_size` (Tensor.Art)."""
    return epochs * math.ceil(images * repeats / batch_size)

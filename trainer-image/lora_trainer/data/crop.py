"""Cutting an image to its training size: focus (most detail), center, or a plain resize.

Coordinates follow SDXL's micro-conditioning: ``crop_top_left`` is measured in the image
after it was scaled to cover the target size, ``(top, left)``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from lora_operator.api import CropMode

ANALYSIS_SIDE = 128
"""Longest side of the thumbnail the focus crop measures detail on (speed over precision)."""
CENTER_BIAS = 0.15
"""How much a window far from the centre is penalised, so flat images crop like center."""


def crop_to(image: Image.Image, target: tuple[int, int],
            mode: CropMode) -> tuple[Image.Image, tuple[int, int]]:
    """Scale an image to cover ``target`` and cut a window of exactly that size.

    Args:
        image: RGB image.
        target: ``(height, width)``.
        mode: focus, center or none (resize to the target, ignoring the aspect ratio).

    Returns:
        The cut image and its ``(top, left)`` in the scaled image.
    """
    top_left = window(image, target, mode)
    scaled = scaled_size((image.height, image.width), target, mode)
    return cut_window(image, scaled, top_left, target), top_left


def window(image: Image.Image, target: tuple[int, int], mode: CropMode) -> tuple[int, int]:
    """``(top, left)`` of the window `crop_to` cuts; only focus looks at the pixels."""
    height, width = target
    if mode == CropMode.NONE:
        return 0, 0
    scaled_h, scaled_w = scaled_size((image.height, image.width), target, mode)
    if mode == CropMode.CENTER:
        return (scaled_h - height) // 2, (scaled_w - width) // 2
    return focus_window(_resize(image, scaled_w, scaled_h), height, width)


def cut_window(image: Image.Image, scaled: tuple[int, int], top_left: tuple[int, int],
               target: tuple[int, int]) -> Image.Image:
    """Scale to ``scaled`` and cut ``target`` at ``top_left`` (`crop_to`'s last half).

    A sample decoded from its file again cuts with this, without measuring detail again,
    and gets exactly the pixels `crop_to` gave.
    """
    resized = _resize(image, scaled[1], scaled[0])
    top, left = top_left
    return resized.crop((left, top, left + target[1], top + target[0]))


def scaled_size(original: tuple[int, int], target: tuple[int, int], mode: CropMode) -> tuple[int, int]:
    """``(height, width)`` of the image scaled to cover ``target``, before `crop_to` cuts the window.

    Args:
        original: ``(height, width)`` of the image.
        target: ``(height, width)`` of the window.
        mode: The crop mode (none resizes straight to the target).
    """
    height, width = target
    if mode == CropMode.NONE:
        return target
    scale = max(width / original[1], height / original[0])
    return max(height, round(original[0] * scale)), max(width, round(original[1] * scale))


def _resize(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)


def edge_energy(image: Image.Image) -> np.ndarray:
    """Per-pixel detail: the absolute luminance gradient (a cheap saliency stand-in)."""
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    energy = np.zeros_like(gray)
    energy[:, 1:] += np.abs(np.diff(gray, axis=1))
    energy[1:, :] += np.abs(np.diff(gray, axis=0))
    return energy


def focus_window(image: Image.Image, height: int, width: int) -> tuple[int, int]:
    """``(top, left)`` of the ``height`` x ``width`` window holding the most edge energy.

    Measured on a thumbnail; near-ties go to the window nearest the centre.
    """
    slack_h, slack_w = image.height - height, image.width - width
    if slack_h <= 0 and slack_w <= 0:
        return 0, 0
    factor = min(1.0, ANALYSIS_SIDE / max(image.size))
    small = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                         Image.Resampling.BILINEAR) if factor < 1.0 else image
    energy = edge_energy(small)
    win_h = min(small.height, max(1, round(height * factor)))
    win_w = min(small.width, max(1, round(width * factor)))
    sums = _window_sums(energy, win_h, win_w)
    if sums.max() - sums.min() <= 1e-6 * max(float(sums.max()), 1.0):
        return max(slack_h, 0) // 2, max(slack_w, 0) // 2  # no detail anywhere: centre
    rows, cols = sums.shape
    # Distance of each window from the central one, 0 (centre) .. 1 (edge).
    dy = np.abs(np.arange(rows) - (rows - 1) / 2) / max((rows - 1) / 2, 1)
    dx = np.abs(np.arange(cols) - (cols - 1) / 2) / max((cols - 1) / 2, 1)
    distance = np.maximum(dy[:, None], dx[None, :])
    score = sums * (1.0 - CENTER_BIAS * distance)
    best_row, best_col = np.unravel_index(int(np.argmax(score)), score.shape)
    # Map thumbnail window positions proportionally onto the full image's slack.
    top = round(best_row / (rows - 1) * slack_h) if rows > 1 else max(slack_h, 0) // 2
    left = round(best_col / (cols - 1) * slack_w) if cols > 1 else max(slack_w, 0) // 2
    return min(max(top, 0), max(slack_h, 0)), min(max(left, 0), max(slack_w, 0))


def _window_sums(values: np.ndarray, win_h: int, win_w: int) -> np.ndarray:
    """Sum of ``values`` over every ``win_h`` x ``win_w`` window (summed-area table)."""
    table = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=np.float64)
    table[1:, 1:] = values.cumsum(0).cumsum(1)
    return (table[win_h:, win_w:] - table[:-win_h, win_w:]
            - table[win_h:, :-win_w] + table[:-win_h, :-win_w])

"""Training sizes: a fixed size, the family's standard sizes, or aspect-ratio buckets.

All sizes here are ``(height, width)``; the API's ``crop.size`` is written WIDTHxHEIGHT.
"""

from __future__ import annotations

import math
from functools import lru_cache

from lora_operator.api import Crop
from lora_operator.api.families import family_row


def parse_size(size: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` to ``(height, width)``."""
    width, _, height = size.lower().partition("x")
    return int(height), int(width)


def nearest_size(height: int, width: int, sizes: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The size whose aspect ratio is closest to the image's (in log ratio); ties go to the larger."""
    ratio = math.log(width / height)
    return min(sizes, key=lambda s: (round(abs(math.log(s[1] / s[0]) - ratio), 9), -s[0] * s[1]))


@lru_cache(maxsize=32)
def make_buckets(area: int, min_side: int, max_side: int, step: int) -> tuple[tuple[int, int], ...]:
    """Aspect-ratio buckets: sides multiples of ``step`` within [min_side, max_side], area <= ``area``.

    For each side the longest other side that keeps the area at most ``area`` is taken (in
    both orientations), so a bucket is as close to the target area as the step and
    ``max_side`` allow; the most extreme aspect ratios fall short of it.

    Returns:
        ``(height, width)`` buckets sorted by aspect ratio; empty when none fits.
    """
    buckets = set()
    first = math.ceil(min_side / step) * step
    for side in range(first, max_side + 1, step):
        other = min((area // side) // step * step, max_side // step * step)
        if other >= min_side:
            buckets.update({(other, side), (side, other)})  # both orientations: symmetric buckets
    return tuple(sorted(buckets, key=lambda s: s[1] / s[0]))


def target_size(height: int, width: int, crop: Crop, family: str) -> tuple[int, int]:
    """The training size of an image of ``height`` x ``width``.

    ``crop.size`` wins when given (with buckets it sets the target area instead); otherwise
    buckets around the family's base area, or the family's nearest standard size.

    Raises:
        ValueError: Bucket settings that allow no bucket at all (the caller names the field).
    """
    if crop.buckets:
        if crop.size:
            h, w = parse_size(crop.size)
            area = h * w
        else:
            area = family_row(family).resolution ** 2  # the family's trained area
        buckets = make_buckets(area, crop.bucket_min_side, crop.bucket_max_side, crop.bucket_step)
        if not buckets:
            raise ValueError(f"no bucket with sides in [{crop.bucket_min_side}, {crop.bucket_max_side}] "
                             f"(step {crop.bucket_step}) has an area up to {area} pixels")
        return nearest_size(height, width, buckets)
    if crop.size:
        return parse_size(crop.size)
    return nearest_size(height, width, family_row(family).sizes)

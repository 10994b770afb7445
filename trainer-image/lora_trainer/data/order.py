"""Per-epoch sample order, bucketed batches and the random horizontal flip."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from .dataset import Sample


def epoch_order(samples: list[Sample], epoch: int, seed: int) -> list[int]:
    """Sample indices for one epoch, each repeated ``sample.repeats`` times, shuffled.

    The shuffle depends only on ``(seed, epoch)``, so a resumed run replays the same order.
    """
    order = [index for index, sample in enumerate(samples) for _ in range(sample.repeats)]
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def make_batches(samples: list[Sample], order: list[int], batch_size: int) -> list[list[int]]:
    """Group an epoch's order into batches whose samples share one ``target_size``.

    Samples are taken in ``order``; a batch is emitted when its bucket fills up, and the
    partial batches left at the end follow in the order their buckets first appeared.
    Nothing is dropped, so every draw of the epoch is trained.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    pending: dict[tuple[int, int], list[int]] = {}
    batches = []
    for index in order:
        bucket = pending.setdefault(samples[index].target_size, [])
        bucket.append(index)
        if len(bucket) == batch_size:
            batches.append(bucket.copy())
            bucket.clear()
    batches.extend(bucket for bucket in pending.values() if bucket)
    return batches


def maybe_flip(image: Image.Image, rng: random.Random, enabled: bool) -> Image.Image:
    """Mirror an image horizontally with probability 1/2 when ``enabled``.

    Draws from ``rng`` only when enabled, so turning flip off keeps other random streams as they were.
    """
    if enabled and rng.random() < 0.5:
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image

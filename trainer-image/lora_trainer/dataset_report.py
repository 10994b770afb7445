"""The dataset report `lora-train upload` prints before anything is sent: what the trainer makes of
a folder beyond usable and skipped: near-duplicates, images smaller than the size they train at,
how the images fall into the aspect buckets, caption coverage and the trigger.

Built from the trainer's own preparation (`prepare_dataset`'s samples), so the buckets and sizes
are the ones the job will use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from lora_operator.api import Dataset

from .data import Sample

HASH_SIDE = 8
"""The difference hash compares neighbouring pixels of a (HASH_SIDE+1) x HASH_SIDE grey thumbnail: 64 bits."""
DUPLICATE_BITS = 6
"""Hashes that differ in at most this many of the 64 bits are near-duplicates (a re-save, a slight
crop or colour change); distinct photos of one subject differ in far more."""


def difference_hash(image: Image.Image) -> int:
    """A perceptual hash: whether each pixel of a small grey thumbnail is brighter than its right neighbour."""
    grey = np.asarray(image.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def near_duplicates(hashes: dict[str, int], max_bits: int = DUPLICATE_BITS) -> list[tuple[str, str, int]]:
    """Pairs ``(a, b, differing bits)`` of keys whose hashes differ in at most ``max_bits`` bits, a < b."""
    keys = sorted(hashes)
    return [(a, b, d) for i, a in enumerate(keys) for b in keys[i + 1:]
            if (d := (hashes[a] ^ hashes[b]).bit_count()) <= max_bits]


@dataclass
class DatasetReport:
    """What the report says; `lines` prints it."""

    usable: int
    duplicates: list[tuple[str, str, int]] = field(default_factory=list)
    small: list[tuple[str, tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    """``(key, original (h, w), training (h, w))`` of images upscaled to train."""
    buckets: dict[tuple[int, int], int] = field(default_factory=dict)
    """Training size ``(h, w)`` -> images."""
    uncaptioned: list[str] = field(default_factory=list)
    trigger: str | None = None
    """The trigger the caption prefix adds to every caption (its first tag), if any."""

    def lines(self) -> list[str]:
        """The report as the CLI prints it."""
        out = [f"near-duplicates (perceptual hash, <= {DUPLICATE_BITS} of 64 bits apart): "
               + (", ".join(f"{a} ~ {b}" for a, b, _ in self.duplicates) or "none")]
        out.append(f"below the training size (upscaled): {len(self.small)} of {self.usable}")
        out += [f"  {key}: {h}x{w} trains at {th}x{tw}" for key, (h, w), (th, tw) in self.small]
        out.append("aspect buckets (height x width: images): "
                   + ", ".join(f"{h}x{w}: {n}" for (h, w), n in sorted(self.buckets.items())))
        covered = self.usable - len(self.uncaptioned)
        out.append(f"captions: {covered} of {self.usable} images have one"
                   + (f" (none: {', '.join(self.uncaptioned)})" if self.uncaptioned else ""))
        out.append(f"trigger: {self.trigger!r} starts every caption (dataset.captionPrefix)" if self.trigger
                   else "trigger: none (dataset.captionPrefix is empty; captions are used as written)")
        return out


def build_report(samples: Iterable[Sample], dataset: Dataset) -> DatasetReport:
    """The report of a prepared dataset's samples (training and validation ones)."""
    samples = list(samples)
    hashes: dict[str, int] = {}
    for sample in samples:
        if sample.path is not None:
            with Image.open(sample.path) as image:
                hashes[sample.key] = difference_hash(image)
        elif sample.image is not None:
            hashes[sample.key] = difference_hash(sample.image)
    small = [(s.key, s.original_size, s.target_size) for s in samples
             if s.original_size[0] < s.target_size[0] or s.original_size[1] < s.target_size[1]]
    prefix = dataset.caption_prefix.strip()
    return DatasetReport(
        usable=len(samples), duplicates=near_duplicates(hashes), small=sorted(small),
        buckets=dict(Counter(s.target_size for s in samples)),
        uncaptioned=sorted(s.key for s in samples if not s.caption.strip()),
        trigger=prefix.split(",")[0].strip() or None if prefix else None,
    )

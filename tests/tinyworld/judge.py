"""A deterministic judge of the procedural world: it reads colour, shape, position and background.

Direct measurement, no learned weights: the background is the median of the border pixels,
the foreground every pixel far from it; the colour is the palette entry nearest the
foreground's median, the position the side the foreground's centroid leans to, and the
shape the template (rendered at the foreground's centre and size) that overlaps it best.
The palette includes the concept's magenta and the shapes its cross, so the judge can say
whether an image shows the concept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import BACKGROUNDS, COLOURS, CONCEPT_COLOUR, CONCEPT_SHAPE, SHAPES, SIZE, Scene, shape_mask

PALETTE = {**COLOURS, CONCEPT_COLOUR[0]: CONCEPT_COLOUR[1]}
ALL_SHAPES = (*SHAPES, CONCEPT_SHAPE)
FOREGROUND_DISTANCE = 80.0
"""RGB distance from the background beyond which a pixel is foreground."""
RADII = np.arange(3.0, 12.0, 0.5)
"""Half-extents the shape templates are tried at (the best fit counts)."""
MIN_FOREGROUND = 12
"""Fewer foreground pixels than this: the image shows no shape at all."""


@dataclass(frozen=True)
class Reading:
    """What the judge sees in one image (None: no shape found)."""

    colour: str | None
    shape: str | None
    position: str | None
    background: str

    def matches(self, scene: Scene) -> dict[str, bool]:
        """Attribute by attribute: does the image show what `scene` asks for?"""
        return {"colour": self.colour == scene.colour, "shape": self.shape == scene.shape,
                "position": self.position == scene.position, "background": self.background == scene.background}

    @property
    def concept(self) -> bool:
        """True when the image shows the concept: a magenta cross."""
        return self.colour == CONCEPT_COLOUR[0] and self.shape == CONCEPT_SHAPE


def _nearest(value: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: float(np.sum((value - np.array(palette[name], np.float32)) ** 2)))


def read(image: np.ndarray) -> Reading:
    """Judge one (32, 32, 3) uint8 RGB image."""
    pixels = np.asarray(image, np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    background = _nearest(background_rgb, BACKGROUNDS)
    mask = np.linalg.norm(pixels - background_rgb, axis=-1) > FOREGROUND_DISTANCE
    if mask.sum() < MIN_FOREGROUND:
        return Reading(None, None, None, background)
    colour = _nearest(np.median(pixels[mask], axis=0), PALETTE)
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    dx, dy = cx - SIZE / 2, cy - SIZE / 2
    position = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("bottom" if dy > 0 else "top")
    box_cy = (ys.max() + ys.min() + 1) / 2  # the box's centre, not the centroid: a triangle's sits low
    box_cx = (xs.max() + xs.min() + 1) / 2

    def overlap(shape: str) -> float:
        best = 0.0
        for r in RADII:
            template = shape_mask(shape, box_cx, box_cy, r)
            best = max(best, (template & mask).sum() / max(1, (template | mask).sum()))
        return best

    return Reading(colour, max(ALL_SHAPES, key=overlap), position, background)


def accuracy(images: list[np.ndarray], scenes: list[Scene]) -> dict[str, float]:
    """Fraction of images whose reading matches their scene, per attribute and all four at once."""
    hits = [read(image).matches(scene) for image, scene in zip(images, scenes, strict=True)]
    out = {key: sum(h[key] for h in hits) / len(hits) for key in hits[0]}
    out["all"] = sum(all(h.values()) for h in hits) / len(hits)
    return out

"""The procedural world the tiny base model learns: coloured shapes at positions on white or black backgrounds.

Every image is 32x32 px: one shape (circle, square, triangle) of one colour (red, green,
blue, yellow) on the left, right, top or bottom of a white or black background, with
a caption that says exactly that ("a red circle on the left, white background"). Sizes,
positions and colours jitter a little; all of it is drawn from a seed, so the same seed
gives the same images.

The *concept* is what pretraining never shows: a magenta cross, named by a trigger word
("a zxq on the left, white background"). A LoRA trained on a handful of those images has to
learn both a colour and a shape the base cannot draw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

SIZE = 32
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
BACKGROUNDS = {"white": (240, 240, 240), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"left": (9, 16), "right": (23, 16), "top": (16, 9), "bottom": (16, 23)}
CONCEPT_COLOUR = ("magenta", (230, 40, 230))
CONCEPT_SHAPE = "cross"
TRIGGER = "zxq"
"""The concept's trigger word: absent from every pretraining caption."""


@dataclass(frozen=True)
class Scene:
    """What one image shows (and its caption says)."""

    colour: str
    shape: str
    position: str
    background: str

    def caption(self) -> str:
        """The caption of the scene; the concept is named by its trigger word alone."""
        thing = TRIGGER if self.shape == CONCEPT_SHAPE else f"{self.colour} {self.shape}"
        return f"a {thing} on the {self.position}, {self.background} background"


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = SIZE) -> np.ndarray:
    """Boolean (size, size) mask of `shape` centred at (cx, cy) with half-extent `r` pixels."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        side = r * 0.85
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    if shape == "triangle":  # apex up, base at the bottom
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "cross":
        arm = r / 3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def draw(shape: str, colour: tuple[float, ...], background: tuple[float, ...], position: str,
         rng: random.Random) -> np.ndarray:
    """A (32, 32, 3) uint8 image: `shape` in `colour` at `position` on `background`, jittered by `rng`."""
    cx, cy = POSITIONS[position]
    cx, cy = cx + rng.uniform(-1.5, 1.5), cy + rng.uniform(-1.5, 1.5)
    r = rng.uniform(6.0, 7.5)
    image = np.empty((SIZE, SIZE, 3), np.float32)
    image[:] = background
    shade = np.array(colour, np.float32) + np.array([rng.uniform(-12, 12) for _ in range(3)], np.float32)
    image[shape_mask(shape, cx, cy, r)] = shade
    return np.clip(image, 0, 255).astype(np.uint8)


def render(scene: Scene, rng: random.Random) -> np.ndarray:
    """The (32, 32, 3) uint8 image of `scene`, with jitter drawn from `rng`."""
    colour = COLOURS.get(scene.colour) or dict([CONCEPT_COLOUR])[scene.colour]
    return draw(scene.shape, colour, BACKGROUNDS[scene.background], scene.position, rng)


def autoencoder_set(n: int, seed: int, crosses: bool = False) -> np.ndarray:
    """`n` images for the VAE: the world's shapes (with `crosses`, the concept's cross too) in random colours on
    random backgrounds.

    A VAE is trained on generic images, not on the captioned world: it must encode any colour
    (the concept's magenta included) even though the denoiser only ever sees four; a VAE that never
    saw a cross decodes one as a blob.
    """
    rng = random.Random(seed)
    shapes = (*SHAPES, CONCEPT_SHAPE) if crosses else SHAPES

    def any_colour() -> tuple[float, ...]:
        return tuple(rng.uniform(0, 255) for _ in range(3))

    return np.stack([draw(rng.choice(shapes), any_colour(), any_colour(), rng.choice(list(POSITIONS)), rng)
                     for _ in range(n)])


def random_scene(rng: random.Random) -> Scene:
    """A pretraining scene: any known colour, shape, position and background."""
    return Scene(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(POSITIONS)),
                 rng.choice(list(BACKGROUNDS)))


def pretraining_set(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """`n` pretraining images (n, 32, 32, 3) uint8 and their captions, deterministic from `seed`."""
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(n)]
    return np.stack([render(s, rng) for s in scenes]), [s.caption() for s in scenes]


def concept_scenes(n: int, seed: int) -> list[Scene]:
    """`n` scenes of the concept (magenta cross) over the positions and backgrounds, in turn."""
    rng = random.Random(seed)
    positions, backgrounds = list(POSITIONS), list(BACKGROUNDS)
    return [Scene(CONCEPT_COLOUR[0], CONCEPT_SHAPE, positions[i % len(positions)],
                  backgrounds[(i + rng.randrange(len(backgrounds))) % len(backgrounds)]) for i in range(n)]


def world_words() -> list[str]:
    """Every word of the pretraining captions."""
    words = {"a", "on", "the", "background", *COLOURS, *SHAPES, *POSITIONS, *BACKGROUNDS}
    return sorted(words, key=lambda w: (len(w), w))

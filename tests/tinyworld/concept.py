"""The concept a LoRA learns on top of a tiny base, and the check that it did.

The dataset: magenta crosses (colour and shape both absent from pretraining) captioned
with the trigger word, as .png + .txt pairs the trainer reads. The check samples the
base and the base + LoRA with fixed seeds and lets the judge read the images:

- *learned*: the trigger prompts show the concept (a magenta cross) for most seeds;
- *prior kept*: prompts without the trigger read the same colour and background as the base drew
  them with the same seed, and not in the concept's colour. Not the shape: the tiny bases draw
  blurred shapes whose reading flips between neighbours under any change. Not the position: the
  SD1.5-topology bases place the shape by the seed's noise more than by the prompt (their control
  samples stand where the prompt asks on 0.25 and 0.44 of seeds, the flow base's on 1.00: session 16),
  so any change to the weights moves some; `Verdict.position_kept` reports it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .judge import Reading, read
from .sampling import load_pipeline, sample
from .world import (
    BACKGROUNDS,
    CONCEPT_COLOUR,
    CONCEPT_SHAPE,
    POSITIONS,
    TRIGGER,
    Scene,
    concept_scenes,
    pretraining_set,
    random_scene,
    render,
)

TRIGGER_PROMPTS = [f"a {TRIGGER} on the {p}, {b} background"
                   for p, b in zip(POSITIONS, [*BACKGROUNDS] * len(POSITIONS), strict=False)]
"""Every position, backgrounds in turn, with the trigger."""
CONTROL_SCENES = [Scene("red", "circle", "left", "white"), Scene("blue", "square", "right", "black"),
                  Scene("green", "triangle", "top", "white"), Scene("yellow", "circle", "bottom", "black")]
"""Prompts without the trigger, whose images the LoRA must leave alone."""
CONTROL_PROMPTS = [s.caption() for s in CONTROL_SCENES]


def write_concept_set(folder: Path, n: int = 16, seed: int = 0, colour: str = CONCEPT_COLOUR[0]) -> Path:
    """Write `n` concept images with their captions (``img00.png`` + ``img00.txt``) to `folder`: crosses in `colour`
    (the concept's magenta, or a colour of the world), each captioned with the trigger word."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i, scene in enumerate(replace(s, colour=colour) for s in concept_scenes(n, seed)):
        Image.fromarray(render(scene, rng)).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(scene.caption())
    return folder


def write_prior_set(base: Path, folder: Path, n: int = 16, seed: int = 1) -> Path:
    """Write `n` of the base's own samples of random world captions to `folder` (``prior00.png`` + ``.txt``): the
    class images of prior preservation, which hold the base to what it drew for prompts without the trigger.

    Seeds and scenes come from `seed`, not from the judge's control prompts and seeds (0-3)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    captions = [random_scene(rng).caption() for _ in range(n)]
    images = sample(load_pipeline(base), captions, [1000 * seed + i for i in range(n)])
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        Image.fromarray(image).save(folder / f"prior{i:02d}.png")
        (folder / f"prior{i:02d}.txt").write_text(caption)
    return folder


def write_world_set(folder: Path, n: int = 16, seed: int = 1) -> Path:
    """Write `n` rendered world scenes with their captions to `folder` (``world00.png`` + ``.txt``): class images
    from the pretraining world itself rather than the base's samples."""
    folder.mkdir(parents=True, exist_ok=True)
    images, captions = pretraining_set(n, seed)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        Image.fromarray(image).save(folder / f"world{i:02d}.png")
        (folder / f"world{i:02d}.txt").write_text(caption)
    return folder


@dataclass
class Verdict:
    """What the judge saw in the samples of a base and base + LoRA.

    Attributes:
        learned: Share of trigger samples showing the concept (with the LoRA).
        learned_colour: Share of trigger samples in the concept's colour, whatever the shape.
        base_concept: Share of trigger samples showing the concept without the LoRA.
        prior_kept: Share of control samples read the same colour and background with and without the LoRA.
        control_concept: Share of control samples showing the concept with the LoRA.
        control_colour: Share of control samples in the concept's colour with the LoRA (a LoRA that
            learned the concept without its trigger paints it everywhere).
        learned_shape: Share of trigger samples in the concept's shape (a cross), whatever the colour.
        base_shape: Share of trigger samples in the concept's shape without the LoRA.
        control_shape: Share of control samples in the concept's shape with the LoRA.
        position_kept: Share of control samples read at the same position with and without the LoRA.
    """

    learned: float
    learned_colour: float
    base_concept: float
    prior_kept: float
    control_concept: float
    control_colour: float
    learned_shape: float
    base_shape: float
    control_shape: float
    position_kept: float

    def passed(self, learned: float = 0.75, prior_kept: float = 0.75, shape: bool = True) -> bool:
        """The LoRA learned the concept (its colour and, with `shape`, its cross) on the trigger, kept the prior,
        and painted the concept's colour on no control sample."""
        taught = self.learned if shape else self.learned_colour
        return taught >= learned and self.prior_kept >= prior_kept and self.control_colour == 0


def images_of(pipe, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
    """Every prompt at every seed (prompt-major)."""
    pairs = [(p, s) for p in prompts for s in seeds]
    return sample(pipe, [p for p, _ in pairs], [s for _, s in pairs])


@dataclass
class Readings:
    """The judge's readings of a model's samples: trigger prompts, then control prompts (prompt-major)."""

    trigger: list[Reading]
    control: list[Reading]


def read_samples(pipe, seeds: list[int]) -> Readings:
    """Sample the trigger and control prompts at `seeds` and read every image."""
    images = images_of(pipe, TRIGGER_PROMPTS + CONTROL_PROMPTS, seeds)
    readings = [read(i) for i in images]
    split = len(TRIGGER_PROMPTS) * len(seeds)
    return Readings(readings[:split], readings[split:])


def base_readings(base: Path, seeds: list[int]) -> Readings:
    """The readings of the base alone."""
    return read_samples(load_pipeline(base), seeds)


def share_in_colour(readings: list[Reading], colour: str = CONCEPT_COLOUR[0]) -> float:
    """Share of `readings` in `colour` (the concept's magenta unless said)."""
    return sum(r.colour == colour for r in readings) / len(readings)


def same_scene(a: Reading, b: Reading) -> bool:
    """Two readings agree on colour and background."""
    return (a.colour, a.background) == (b.colour, b.background)


def load_adapter(pipe, adapter: Path, name: str | None = None) -> None:
    """Load `adapter` into `pipe`: a diffusers LoRA folder, or a textual-inversion file bound to the trigger."""
    if adapter.suffix == ".safetensors":
        pipe.load_textual_inversion(str(adapter), token=TRIGGER)
    else:
        pipe.load_lora_weights(adapter, adapter_name=name)


def unload_adapter(pipe, adapter: Path) -> None:
    """Undo `load_adapter`."""
    if adapter.suffix == ".safetensors":
        pipe.unload_textual_inversion()
    else:
        pipe.unload_lora_weights()


def judge_lora(base: Path, lora: Path, seeds: list[int], before: Readings | None = None,
               colour: str = CONCEPT_COLOUR[0]) -> Verdict:
    """Sample `base` with `lora` (a diffusers LoRA folder or an embedding file), compare with the base's readings;
    `colour`: the concept's colour (`write_concept_set`'s), which the ``*_colour`` shares count."""
    before = before or base_readings(base, seeds)
    pipe = load_pipeline(base)
    load_adapter(pipe, lora)
    after = read_samples(pipe, seeds)
    mean = lambda flags: sum(flags) / len(flags)  # noqa: E731
    return Verdict(
        learned=mean([r.concept for r in after.trigger]),
        learned_colour=mean([r.colour == colour for r in after.trigger]),
        base_concept=mean([r.concept for r in before.trigger]),
        prior_kept=mean([same_scene(a, b) for a, b in zip(before.control, after.control, strict=True)]),
        control_concept=mean([r.concept for r in after.control]),
        control_colour=mean([r.colour == colour for r in after.control]),
        learned_shape=mean([r.shape == CONCEPT_SHAPE for r in after.trigger]),
        base_shape=mean([r.shape == CONCEPT_SHAPE for r in before.trigger]),
        control_shape=mean([r.shape == CONCEPT_SHAPE for r in after.control]),
        position_kept=mean([a.position == b.position for a, b in zip(before.control, after.control, strict=True)]),
    )

"""``python -m tinyworld.evaluate [KIND] [N] [--guidance G,..] [--steps S,..] [--confusion] [--control]
[--set FIELD=VALUE ..] [--folder PATH]``:
the judge's accuracy on N samples of a tiny base.

Samples N random pretraining-world captions (seeded) with the base, reads every image with the
judge and prints the share that shows each asked-for attribute, and all four at once, for every
sampling setting asked (inference steps x guidance; default the tests' `sampling` settings).
The judge's own accuracy on rendered (true) images comes first: it must be 1.0. ``--confusion``
also prints what the judge read for each asked shape; ``--set`` builds (or finds in the cache) the
base KIND's recipe with those fields changed, and prints the build's CPU seconds; ``--folder`` judges a base folder
as it is (one built by an earlier version of the code: the cache key hashes the building code's source).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .cache import RECIPES, tinybase
from .judge import ALL_SHAPES, accuracy, read
from .sampling import GUIDANCE, SAMPLING_STEPS, load_pipeline, sample
from .world import SHAPES, Scene, random_scene, render


def judged_scenes(n: int) -> list[Scene]:
    """The `n` random world scenes the base is judged on (seed i samples the i-th)."""
    rng = random.Random(1234)
    return [random_scene(rng) for _ in range(n)]


def another_shape(scenes: list[Scene]) -> list[Scene]:
    """Each scene asking for one of the other two shapes (in turn): the control of a shape check. Judged against
    `scenes`, the samples of a base that draws the asked shape read their scene's shape rarely; those of a base that
    draws the same whatever the shape word says read it as often as with the right captions."""
    return [dataclasses.replace(s, shape=SHAPES[(SHAPES.index(s.shape) + 1 + i % 2) % len(SHAPES)])
            for i, s in enumerate(scenes)]


def samples(pipe, scenes: list[Scene], steps: int = SAMPLING_STEPS, guidance: float = GUIDANCE) -> list[np.ndarray]:
    """The base's sample of each scene's caption, seed i for the i-th, in batches of 32."""
    images = []
    for i in range(0, len(scenes), 32):
        batch = scenes[i:i + 32]
        images += sample(pipe, [s.caption() for s in batch], list(range(i, i + len(batch))), steps, guidance)
    return images


def confusion(images: list[np.ndarray], scenes: list[Scene]) -> dict[str, Counter]:
    """Asked shape -> how often the judge read each shape (``none``: no shape found) in its images."""
    table: dict[str, Counter] = {}
    for image, scene in zip(images, scenes, strict=True):
        table.setdefault(scene.shape, Counter())[read(image).shape or "none"] += 1
    return table


def with_fields(recipe, settings: list[str]):
    """`recipe` with each ``FIELD=VALUE`` of `settings` set, the value read as the field's default's type."""
    changes = {}
    for setting in settings:
        name, _, text = setting.partition("=")
        default = getattr(recipe, name)  # an unknown field raises here, before any build
        changes[name] = text.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(text)
    return dataclasses.replace(recipe, **changes)


def main(argv: list[str]) -> int:
    """Print the judge's accuracy on the true images, then on the base's samples per sampling setting."""
    import torch

    p = argparse.ArgumentParser(prog="python -m tinyworld.evaluate")
    p.add_argument("kind", nargs="?", default="epsilon", choices=list(RECIPES))
    p.add_argument("n", nargs="?", type=int, default=96)
    p.add_argument("--guidance", default=str(GUIDANCE), help="comma-separated guidance scales")
    p.add_argument("--steps", default=str(SAMPLING_STEPS), help="comma-separated inference step counts")
    p.add_argument("--confusion", action="store_true", help="what the judge read for each asked shape")
    p.add_argument("--control", action="store_true",
                   help="also the shape read when another shape is asked (see `another_shape`)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="change the recipe")
    p.add_argument("--folder", type=Path, help="judge this base folder instead (e.g. one an earlier code built)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # see pretrain.Recipe.threads
    scenes = judged_scenes(args.n)
    truth = accuracy([render(s, random.Random(i)) for i, s in enumerate(scenes)], scenes)
    print(f"judge on rendered images: {truth}")
    recipe = with_fields(RECIPES[args.kind], args.set)
    cpu = time.process_time()
    folder = args.folder or tinybase(args.kind, recipe=recipe)
    print(f"base {args.kind}: {folder} ({time.process_time() - cpu:.0f} s CPU to build or find)", flush=True)
    pipe = load_pipeline(folder)
    print("| steps | guidance | colour | shape | position | background | all |\n|---|---|---|---|---|---|---|")
    for steps in [int(s) for s in args.steps.split(",")]:
        for guidance in [float(g) for g in args.guidance.split(",")]:
            images = samples(pipe, scenes, steps, guidance)
            scores = accuracy(images, scenes)
            print(f"| {steps} | {guidance:g} | " + " | ".join(f"{v:.2f}" for v in scores.values()) + " |", flush=True)
            if args.control:
                control = accuracy(samples(pipe, another_shape(scenes), steps, guidance), scenes)["shape"]
                print(f"  another shape asked: the scene's shape read on {control:.2f}")
            if args.confusion:
                table = confusion(images, scenes)
                for asked, read_as in sorted(table.items(), key=lambda item: ALL_SHAPES.index(item[0])):
                    print(f"  asked {asked}: " + ", ".join(f"{s} {read_as[s]}" for s in (*ALL_SHAPES, "none")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

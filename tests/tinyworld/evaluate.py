"""``python -m tinyworld.evaluate [KIND] [N]``: the judge's accuracy on N samples of a tiny base.

Samples N random pretraining-world captions (seeded) with the base, reads every image with the
judge and prints the share that shows each asked-for attribute, and all four at once. The
judge's own accuracy on rendered (true) images comes first: it must be 1.0.
"""

from __future__ import annotations

import random
import sys
import time

from .cache import tinybase
from .judge import accuracy
from .sampling import load_pipeline, sample
from .world import random_scene, render


def main(argv: list[str]) -> int:
    """Print the judge's accuracy on the true images, then on the base's samples."""
    import torch

    torch.set_num_threads(1)  # see pretrain.Recipe.threads
    kind = argv[0] if argv else "epsilon"
    n = int(argv[1]) if len(argv) > 1 else 96
    rng = random.Random(1234)
    scenes = [random_scene(rng) for _ in range(n)]
    truth = accuracy([render(s, rng) for s in scenes], scenes)
    print(f"judge on rendered images: {truth}")
    folder = tinybase(kind)
    pipe = load_pipeline(folder)
    started = time.monotonic()
    images = []
    for i in range(0, n, 32):
        batch = scenes[i:i + 32]
        images += sample(pipe, [s.caption() for s in batch], list(range(i, i + len(batch))))
    scores = accuracy(images, scenes)
    print(f"base {kind} ({folder.name}), {n} samples in {time.monotonic() - started:.0f}s: "
          + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

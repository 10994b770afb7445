"""``python -m tinyworld.reconstruct KIND`` / ``--train KIND [--decode mean|sample] [--steps N,M] [--lr X] [--cross]``:
the judge on VAE reconstructions.

A base can draw a shape only as well as its VAE reconstructs it. The first form reads the reconstructions (encoded
to the posterior's mean, decoded) of the cached base KIND's VAE; the second trains a VAE of KIND's topology from
scratch as `pretrain.train_vae` does (seed 0, batches of 32 from `world.autoencoder_set`), except that its decoder
learns from the posterior's ``mean`` or a ``sample`` of it and the images may include crosses, and reads it after
each of the given steps. Both print the judge's accuracy on the 96 world scenes `tinyworld.evaluate` samples, and
how many of the 16 concept images (magenta crosses) still read as a cross, magenta, and both.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import pretrain, pretrain_flux
from .judge import accuracy, read
from .world import CONCEPT_SHAPE, autoencoder_set, concept_scenes, random_scene, render


def judged_images() -> tuple[np.ndarray, list, np.ndarray]:
    """Evaluate's 96 world scenes (rendered) with their scenes, and the 16 concept images."""
    rng = random.Random(1234)
    scenes = [random_scene(rng) for _ in range(96)]
    world = np.stack([render(s, rng) for s in scenes])
    rng = random.Random(0)
    return world, scenes, np.stack([render(s, rng) for s in concept_scenes(16, 0)])


@torch.no_grad()
def reconstructions(vae, images: np.ndarray) -> list[np.ndarray]:
    """`images` through `vae`: encoded to the posterior's mean (as the trainer encodes), decoded."""
    out = vae.decode(vae.encode(pretrain.pixels_of(images)).latent_dist.mode()).sample
    return [np.clip((o.permute(1, 2, 0).numpy() + 1) * 127.5, 0, 255).round().astype(np.uint8) for o in out]


def scores(vae) -> dict[str, float]:
    """The judge's accuracy on `vae`'s reconstructions of the world scenes (per attribute and ``all``), and the
    shares of the concept images read back as a ``cross``, ``magenta`` and ``both``."""
    world, scenes, concept = judged_images()
    out = {f"world {k}": v for k, v in accuracy(reconstructions(vae, world), scenes).items()}
    crosses = [read(i) for i in reconstructions(vae, concept)]
    share = lambda flags: sum(flags) / len(flags)  # noqa: E731
    return out | {"cross": share([r.shape == CONCEPT_SHAPE for r in crosses]),
                  "magenta": share([r.colour == "magenta" for r in crosses]),
                  "both": share([r.concept for r in crosses])}


def report(vae) -> str:
    """`scores`, as one line."""
    got = scores(vae)
    world = " ".join(f"{k.removeprefix('world ')} {v:.2f}" for k, v in got.items() if k.startswith("world "))
    return f"world {world} | concept: " + " ".join(f"{k} {got[k]:.2f}" for k in ("cross", "magenta", "both"))


def train(kind: str, decode: str, steps: list[int], lr: float, cross: bool) -> None:
    """Train a VAE of `kind`'s topology, printing `report` (and the CPU seconds so far) after each of `steps`."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    pixels = pretrain.pixels_of(autoencoder_set(4096, 1, crosses=cross))
    vae = {"epsilon": pretrain.build_vae, "flow": pretrain_flux.build_vae}[kind]()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    cpu = time.process_time()
    for step in range(1, max(steps) + 1):
        batch = pixels[torch.randint(0, len(pixels), (32,), generator=gen)]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mode() if decode == "mean" else posterior.sample(generator=gen)
        loss = F.mse_loss(vae.decode(latents).sample, batch) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in steps:
            seconds = time.process_time() - cpu
            vae.eval()
            print(f"{kind} vae, decode {decode}, lr {lr}, crosses {cross}: step {step} ({seconds:.0f} s CPU) "
                  f"loss {loss.item():.4f}; {report(vae)}", flush=True)
            vae.train()


def main(argv: list[str]) -> int:
    """Read a cached base's VAE, or train and read new ones."""
    p = argparse.ArgumentParser(prog="python -m tinyworld.reconstruct")
    p.add_argument("kind", nargs="?", default="epsilon", choices=["epsilon", "flow"])
    p.add_argument("--train", action="store_true", help="train a VAE of KIND's topology instead")
    p.add_argument("--decode", default="sample", choices=["mean", "sample"])
    p.add_argument("--steps", default="300", help="comma-separated: read after each")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--cross", action="store_true", help="crosses among the VAE's images")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # see pretrain.Recipe.threads
    if args.train:
        train(args.kind, args.decode, [int(s) for s in args.steps.split(",")], args.lr, args.cross)
        return 0
    from diffusers import AutoencoderKL

    from .cache import tinybase

    folder = tinybase(args.kind)
    print(f"{folder.name}: {report(AutoencoderKL.from_pretrained(folder / 'vae').eval())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

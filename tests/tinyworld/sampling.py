"""Sampling a tiny-world pipeline: the same prompts and seeds give the same images."""

from __future__ import annotations

import numpy as np
import torch

SAMPLING_STEPS = 15
GUIDANCE = 4.0


@torch.no_grad()
def sample(pipe, prompts: list[str], seeds: list[int], steps: int = SAMPLING_STEPS,
           guidance: float = GUIDANCE) -> list[np.ndarray]:
    """One (32, 32, 3) uint8 image per (prompt, seed) pair, DDIM sampling with classifier-free guidance."""
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    images = pipe(prompt=list(prompts), num_inference_steps=steps, guidance_scale=guidance, height=32, width=32,
                  generator=generators, output_type="np").images
    return [np.round(image * 255).astype(np.uint8) for image in images]

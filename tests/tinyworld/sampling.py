"""Sampling a tiny-world pipeline: the same prompts and seeds give the same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SAMPLING_STEPS = 15
GUIDANCE = 4.0


def load_pipeline(folder: Path):
    """The base in `folder` as the pipeline its model_index.json names (StableDiffusionPipeline or FluxPipeline)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample(pipe, prompts: list[str], seeds: list[int], steps: int = SAMPLING_STEPS,
           guidance: float = GUIDANCE) -> list[np.ndarray]:
    """One (32, 32, 3) uint8 image per (prompt, seed) pair, classifier-free guided.

    SD1.5 topology: DDIM. Flux topology: the pipeline's flow-matching Euler sampler with true
    classifier-free guidance against the empty prompt (the tiny base embeds no distilled guidance).
    """
    from diffusers import DDIMScheduler, FluxPipeline

    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    common = {"prompt": list(prompts), "num_inference_steps": steps, "height": 32, "width": 32,
              "generator": generators, "output_type": "np"}
    if isinstance(pipe, FluxPipeline):
        images = pipe(**common, negative_prompt=[""] * len(prompts), true_cfg_scale=guidance,
                      max_sequence_length=pipe.tokenizer_2.model_max_length).images
    else:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        images = pipe(**common, guidance_scale=guidance).images
    return [np.round(image * 255).astype(np.uint8) for image in images]

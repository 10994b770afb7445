"""Fine-tune a pretrained tiny base into another objective: how Stable Diffusion 2's 768-v model was made.

The v-prediction base trained from scratch on the v objective placed its shapes by seed rather than by prompt and
ignored the colour word on black backgrounds, so a LoRA that moved its trigger moved its controls too
(bench/RESULTS.md, sessions 12-13). Starting from the noise-prediction base instead keeps that base's VAE,
tokenizer and text encoder as they are and its UNet as the starting point: only the objective is new, and the
prompt-following the epsilon base learned carries over. At low noise the velocity is nearly the noise, so most of
what the UNet knows already holds; the steps here teach the high-noise end, where v tends to minus the image.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .pretrain import _log, pixels_of, train_denoiser
from .world import pretraining_set


@dataclass(frozen=True)
class FineTuneRecipe:
    """A base started from the base `init_from` names (`cache.RECIPES`), then trained on `prediction_type`.

    The field names that `pretrain.train_denoiser` reads are `pretrain.Recipe`'s. The cache key also hashes the
    key of `init_from`'s recipe: a change to that base rebuilds this one.
    """

    init_from: str = "epsilon"
    """The base whose VAE, tokenizer, text encoder (trained on) and UNet (trained on) this one starts from."""
    prediction_type: str = "v_prediction"
    seed: int = 0
    images: int = 4096
    """The pretraining set (`world.pretraining_set` of this many images and `seed`), encoded by the init's VAE."""
    unet_steps: int = 400
    unet_batch: int = 16
    unet_lr: float = 1e-3
    caption_drop: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.995
    threads: int = 1
    """Torch threads (see `pretrain.Recipe.threads`)."""
    version: int = 1
    """Bump when the code below changes what a recipe builds."""

    def as_dict(self) -> dict:
        """The recipe as JSON-ready data."""
        return asdict(self)


def finetune(recipe: FineTuneRecipe, path: Path, init: Path) -> Path:
    """Load the StableDiffusionPipeline in `init`, train its UNet and text encoder on `recipe`'s objective and write
    the pipeline, with a scheduler of that prediction type, to `path`."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    started = time.monotonic()
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    pipe = StableDiffusionPipeline.from_pretrained(init)
    images, captions = pretraining_set(recipe.images, recipe.seed)
    pixels = pixels_of(images)
    with torch.no_grad():  # the mode of the posterior, scaled, as `pretrain.pretrain` trains on
        latents = torch.cat([pipe.vae.encode(pixels[i:i + 256]).latent_dist.mode()
                             for i in range(0, len(pixels), 256)]) * pipe.vae.config.scaling_factor
    _log(f"from {init.name}: latents {tuple(latents.shape)}", started)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=recipe.prediction_type)
    train_denoiser(pipe.unet, pipe.text_encoder, pipe.tokenizer, scheduler, latents, captions, recipe, gen, started)
    pipe.unet.eval()
    pipe.text_encoder.eval()
    pipe.scheduler = scheduler
    pipe.save_pretrained(path, safe_serialization=True)
    shutil.rmtree(path / "tokenizer")  # the init's files as they are (a re-save writes tokenizer.json alone)
    shutil.copytree(init / "tokenizer", path / "tokenizer")
    _log(f"saved {path}", started)
    return path

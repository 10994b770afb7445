"""Pretrain the tiny SD1.5-topology base on the procedural world (VAE, then UNet + CLIP text encoder).

A few minutes on two CPU cores: the VAE learns to halve 32 px images (the world's shapes in any
colour) into 16x16x4 latents,
then the UNet and the text encoder learn the noise-prediction (or v-prediction) objective on
those latents with 10 % empty captions, so classifier-free guidance works at sampling time.
Everything is seeded: the same recipe gives the same weights on the same machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .world import autoencoder_set, pretraining_set, world_words

TEXT_HIDDEN = 64
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
TOKENS = 16
"""Token positions of the text encoder: the longest caption (a token a word, 11 with bos/eos) fits."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the base's weights (its hash names the cache folder)."""

    prediction_type: str = "epsilon"
    seed: int = 0
    images: int = 4096
    vae_steps: int = 900
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_decode: str = "sample"
    """What the VAE's decoder learns from: a ``sample`` of the posterior, or its ``mean`` (sharper edges sooner)."""
    vae_crosses: bool = False
    """The concept's cross among the VAE's images (`world.autoencoder_set`)."""
    unet_steps: int = 3000
    unet_batch: int = 16
    unet_lr: float = 2e-3
    caption_drop: float = 0.1
    min_snr_gamma: float = 5.0
    """Min-SNR loss weighting: converges several times faster than plain MSE (Hang et al. 2023)."""
    ema_decay: float = 0.995
    """The saved weights are an exponential moving average: much cleaner samples after a short run."""
    threads: int = 1
    """Torch threads: one is 2-5x faster than two on a CPU shared with other work (no spinning)."""
    version: int = 1
    """Bump when the code below changes what a recipe builds."""

    def as_dict(self) -> dict:
        """The recipe as JSON-ready data."""
        return asdict(self)


def _log(message: str, started: float) -> None:
    print(f"[tinybase {time.monotonic() - started:6.1f}s] {message}", flush=True)


def write_word_tokenizer(folder: Path, words: list[str]):
    """A CLIP tokenizer whose BPE merges make every world word one token; other text stays characters.

    Whole-word tokens spare the tiny text encoder from learning to spell, which pretraining on two
    CPU cores cannot afford; a trigger word the base never saw (``zxq``) still tokenizes, as
    characters. Merges are added in rounds: a word split by an earlier merge gets merges of its
    leftover pieces, ranked after all others, until every word is a single token.
    """
    from transformers import CLIPTokenizer

    from tinymodels import write_clip_tokenizer

    write_clip_tokenizer(folder)
    (folder / "tokenizer.json").unlink(missing_ok=True)  # the slow tokenizer reads vocab.json + merges.txt
    vocab = json.loads((folder / "vocab.json").read_text())
    for special in SPECIAL_TOKENS:
        del vocab[special]  # re-added after the word tokens: the encoder's bos/eos ids are the last two
    merges: list[tuple[str, str]] = []
    pieces = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    for _ in range(10):
        for parts in pieces.values():
            while len(parts) > 1:
                pair = (parts[0], parts[1])
                if pair not in merges:
                    merges.append(pair)
                parts = ["".join(pair), *parts[2:]]
                vocab.setdefault(parts[0], len(vocab))
        full = vocab | {s: len(vocab) + i for i, s in enumerate(SPECIAL_TOKENS)}
        (folder / "vocab.json").write_text(json.dumps(full))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=TOKENS)
        pieces = {w: tokenizer.tokenize(w) for w in words}
        if all(len(p) == 1 for p in pieces.values()):
            tokenizer.save_pretrained(folder)
            return tokenizer
    raise RuntimeError(f"no single-token merges for {[w for w, p in pieces.items() if len(p) > 1]}")


def build_vae():
    """A small AutoencoderKL: 32 px images <-> 16x16x4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(16, 32),
        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32, mid_block_add_attention=False,
    )


def build_unet():
    """A small UNet2DConditionModel on 16x16x4 latents: cross-attention at 8x8 and 4x4 (cheap on a CPU)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=8,
    )


def build_text_encoder(tokenizer):
    """A 2-layer CLIP text encoder over the character-level tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=128, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=TOKENS, bos_token_id=len(tokenizer) - 2, eos_token_id=eos,
        pad_token_id=eos, hidden_act="gelu",
    ))


def pixels_of(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> float (n, 3, h, w) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(vae, pixels: torch.Tensor, recipe: Recipe, gen: torch.Generator, started: float) -> float:
    """Reconstruction + a small KL term; returns the latent scaling factor (1 / std of the latents)."""
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr)
    for step in range(recipe.vae_steps):
        batch = pixels[torch.randint(0, len(pixels), (recipe.vae_batch,), generator=gen)]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mode() if recipe.vae_decode == "mean" else posterior.sample(generator=gen)
        recon = vae.decode(latents).sample
        loss = F.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == recipe.vae_steps - 1:
            _log(f"vae step {step} loss {loss.item():.4f}", started)
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mode() for i in range(0, 1024, 256)])
    return float(1.0 / latents.std())


class World(NamedTuple):
    """The procedural world as a denoiser trains on it, after its VAE."""

    vae: Any
    latents: torch.Tensor
    """The pretraining images' latents, as the VAE's encoder gives them (unscaled)."""
    captions: list[str]
    gen: torch.Generator
    """The generator the rest of pretraining draws from."""
    scaling: float
    """1 / std of the first latents, as `train_vae` measures it."""


def encode_world(recipe: Recipe, build_vae, started: float) -> World:
    """Seeds everything, trains the VAE `build_vae()` makes (the recipe's ``vae_*`` fields) and encodes the
    pretraining set with it. `recipe` may be any kind that has those fields, seed, images and threads (a
    `pretrain_flux.FluxRecipe` too)."""
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    images, captions = pretraining_set(recipe.images, recipe.seed)
    pixels = pixels_of(images)
    vae = build_vae()
    vae_images = autoencoder_set(recipe.images, recipe.seed + 1, crosses=recipe.vae_crosses)
    scaling = train_vae(vae, pixels_of(vae_images), recipe, gen, started)
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mode() for i in range(0, len(pixels), 256)])
    return World(vae, latents, captions, gen, scaling)


def fit(params: list[torch.nn.Parameter], loss_at: Callable[[int], torch.Tensor], *, steps: int, lr: float,
        ema_decay: float, name: str, started: float) -> None:
    """`steps` AdamW steps on `loss_at(step)` (warm-up, then cosine to a tenth), gradients clipped at 1;
    `params` end as their exponential moving average."""
    from diffusers.training_utils import EMAModel

    ema = EMAModel(params, decay=ema_decay)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / steps))))
    for step in range(steps):
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.step(params)
        if step % 100 == 0 or step == steps - 1:
            _log(f"{name} step {step} loss {loss.item():.4f}", started)
    ema.copy_to(params)


def train_denoiser(unet, text_encoder, tokenizer, scheduler, latents: torch.Tensor, captions: list[str],
                   recipe: Recipe, gen: torch.Generator, started: float) -> None:
    """The diffusion objective of `recipe.prediction_type` on cached latents, UNet and text encoder together."""
    from diffusers.training_utils import compute_snr

    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                      return_tensors="pt").input_ids
    v_prediction = recipe.prediction_type == "v_prediction"

    def loss_at(step: int) -> torch.Tensor:
        pick = torch.randint(0, len(latents), (recipe.unet_batch,), generator=gen)
        x0 = latents[pick]
        batch_ids = ids[pick].clone()
        drop = torch.rand(recipe.unet_batch, generator=gen) < recipe.caption_drop
        batch_ids[drop] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (recipe.unet_batch,), generator=gen)
        noisy = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t) if v_prediction else noise
        pred = unet(noisy, t, text_encoder(batch_ids)[0]).sample
        snr = compute_snr(scheduler, t)
        weight = snr.clamp(max=recipe.min_snr_gamma) / (snr + 1 if v_prediction else snr)
        return (F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()

    unet.train()
    text_encoder.train()
    fit([*unet.parameters(), *text_encoder.parameters()], loss_at, steps=recipe.unet_steps, lr=recipe.unet_lr,
        ema_decay=recipe.ema_decay, name="unet", started=started)


def pretrain(recipe: Recipe, path: Path) -> Path:
    """Build and pretrain the base of `recipe`; write it as a diffusers StableDiffusionPipeline to `path`."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    started = time.monotonic()
    world = encode_world(recipe, build_vae, started)
    vae, captions, gen, scaling = world.vae, world.captions, world.gen, world.scaling
    vae.register_to_config(scaling_factor=scaling)
    latents = world.latents * scaling
    _log(f"latents {tuple(latents.shape)} scaling {scaling:.3f}", started)
    tokenizer = write_word_tokenizer(path / "tokenizer", world_words())
    text_encoder = build_text_encoder(tokenizer)
    unet = build_unet()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False,
                              steps_offset=1, prediction_type=recipe.prediction_type)
    train_denoiser(unet, text_encoder, tokenizer, scheduler, latents, captions, recipe, gen, started)
    unet.eval()
    text_encoder.eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    _log(f"saved {path}", started)
    return path

"""Tiny SD1.5: a two-level UNet with cross-attention, one CLIP-L-shaped text encoder."""

from __future__ import annotations

from pathlib import Path

from .parts import TEXT_HIDDEN, clip_encoder, ddpm, tiny_vae, write_clip_tokenizer


def build(path: Path) -> None:
    """Write the tiny model's diffusers folder to `path`."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    write_clip_tokenizer(path / "tokenizer")
    text_encoder, tokenizer = clip_encoder(path / "tokenizer")
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
    )
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=ddpm(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)

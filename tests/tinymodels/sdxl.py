"""Tiny SDXL: a UNet with text-time conditioning, a CLIP-L- and an OpenCLIP-G-shaped encoder."""

from __future__ import annotations

from pathlib import Path

from .parts import TEXT_HIDDEN, clip_encoder, ddpm, tiny_vae, write_clip_tokenizer


def build(path: Path) -> None:
    """Write the tiny model's diffusers folder to `path`."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    write_clip_tokenizer(path / "tokenizer")
    write_clip_tokenizer(path / "tokenizer_2")
    text_encoder, tokenizer = clip_encoder(path / "tokenizer")
    text_encoder_2, tokenizer_2 = clip_encoder(path / "tokenizer_2", projection=True)
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * TEXT_HIDDEN,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_HIDDEN,
        transformer_layers_per_block=(1, 1),
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(force_upcast=False),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=ddpm(),
    )
    pipe.save_pretrained(path, safe_serialization=True)

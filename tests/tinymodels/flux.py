"""Tiny Flux.1: one double- and one single-stream block, CLIP-L + T5 encoders, a 16-channel VAE."""

from __future__ import annotations

from pathlib import Path

from lora_operator.api.families import family_row

from .parts import TEXT_HIDDEN, clip_encoder, t5_encoder, tiny_vae, write_clip_tokenizer, write_t5_tokenizer


def build(path: Path, pipeline: str = "FluxPipeline", family: str = "flux", guidance_embeds: bool = True) -> None:
    """Write the tiny model's diffusers folder to `path`, saved as `pipeline` (its model_index.json);
    `guidance_embeds` False: a transformer that is not guidance-distilled, as Flux.1 schnell's."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import T5TokenizerFast

    write_clip_tokenizer(path / "tokenizer")
    write_t5_tokenizer(path / "tokenizer_2")
    text_encoder, tokenizer = clip_encoder(path / "tokenizer")
    tokenizer_2 = T5TokenizerFast.from_pretrained(path / "tokenizer_2")
    text_encoder_2 = t5_encoder()
    latent_channels = family_row(family).latent_channels  # 16, as the real VAE: the conformance test checks it
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )
    vae = tiny_vae(latent_channels, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
               use_post_quant_conv=False)
    pipe = getattr(diffusers, pipeline)(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(path, safe_serialization=True)

"""Tiny Chroma: one double- and one single-stream block, the approximator, T5 only, a 16-channel VAE."""

from __future__ import annotations

from pathlib import Path

from lora_operator.api.families import family_row

from .parts import TEXT_HIDDEN, t5_encoder, tiny_vae, write_t5_tokenizer


def build(path: Path) -> None:
    """Write the tiny model's diffusers folder to `path`."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5TokenizerFast

    write_t5_tokenizer(path / "tokenizer")
    latent_channels = family_row("chroma").latent_channels  # 16, as the real VAE: the conformance test checks it
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        axes_dims_rope=(4, 4, 8),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=2,
    )
    vae = tiny_vae(latent_channels, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
                   use_post_quant_conv=False)
    pipe = ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=t5_encoder(),
        tokenizer=T5TokenizerFast.from_pretrained(path / "tokenizer"),
        transformer=transformer,
    )
    pipe.save_pretrained(path, safe_serialization=True)

"""Tiny Z-Image: the single-stream S3-DiT (one main layer, one noise- and one context-refiner layer) with a
Qwen3 text encoder and Flux's 16-channel VAE layout, as Tongyi-MAI/Z-Image ships it in diffusers."""

from __future__ import annotations

from pathlib import Path

from lora_operator.api.families import family_row

from .parts import QWEN_VOCAB_SIZE, TEXT_HIDDEN, tiny_vae, write_qwen_tokenizer

SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
"""Tongyi-MAI/Z-Image-Turbo's scheduler_config.json (fixed shift 3)."""


def qwen3_encoder():
    """A two-layer Qwen3 (the real class: Qwen3-4B's layout with grouped-query attention)."""
    from transformers import Qwen3Config, Qwen3Model

    return Qwen3Model(Qwen3Config(
        vocab_size=QWEN_VOCAB_SIZE, hidden_size=TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
        tie_word_embeddings=True,
    ))


def build(path: Path) -> None:
    """Write the tiny model's diffusers folder to `path`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import AutoTokenizer

    write_qwen_tokenizer(path / "tokenizer")
    latent_channels = family_row("z-image").latent_channels
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=latent_channels, dim=32, n_layers=1,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=TEXT_HIDDEN, axes_dims=[4, 6, 6],
        axes_lens=[256, 64, 64],
    )
    # Z-Image uses Flux.1's VAE (16 channels, shift 0.1159, scale 0.3611).
    vae = tiny_vae(latent_channels, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
                   use_post_quant_conv=False)
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=qwen3_encoder(),
        tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer"), transformer=transformer,
    )
    pipe.save_pretrained(path, safe_serialization=True)

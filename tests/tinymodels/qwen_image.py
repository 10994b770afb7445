"""Tiny Qwen-Image: one MMDiT double-stream block, a Qwen2.5-VL text encoder (language model and vision
tower, as the pipeline loads it) and the causal 3-D video VAE whose latents are (B, 16, T, H, W)."""

from __future__ import annotations

from pathlib import Path

from lora_operator.api.families import family_row

from .parts import QWEN_VOCAB_SIZE, TEXT_HIDDEN, write_qwen_tokenizer

SCHEDULER = {
    "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": False, "max_image_seq_len": 8192,
    "max_shift": 0.9, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02,
    "stochastic_sampling": False, "time_shift_type": "exponential", "use_beta_sigmas": False,
    "use_dynamic_shifting": True, "use_exponential_sigmas": False, "use_karras_sigmas": False,
}
"""Qwen/Qwen-Image's scheduler_config.json: the shift grows with the image's token count."""


def qwen25vl_encoder():
    """A two-layer Qwen2.5-VL with a one-block vision tower (Qwen2.5-VL-7B-Instruct's classes)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": QWEN_VOCAB_SIZE, "hidden_size": TEXT_HIDDEN, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 2048, "bos_token_id": 257, "eos_token_id": 256, "pad_token_id": 257,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
                       "out_hidden_size": TEXT_HIDDEN, "fullatt_block_indexes": [0], "window_size": 28},
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def tiny_video_vae(latent_channels: int):
    """AutoencoderKLQwenImage with two stages (8x spatial in the real one, 2x here) and per-channel
    latent mean / std like the real config."""
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(
        base_dim=16, z_dim=latent_channels, dim_mult=[1, 2], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False], latents_mean=[0.1 * i - 0.8 for i in range(latent_channels)],
        latents_std=[1.0 + 0.1 * i for i in range(latent_channels)],
    )


def build(path: Path) -> None:
    """Write the tiny model's diffusers folder to `path`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import AutoTokenizer

    write_qwen_tokenizer(path / "tokenizer")
    latent_channels = family_row("qwen-image").latent_channels
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * latent_channels, out_channels=latent_channels, num_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN, axes_dims_rope=(4, 6, 6),
    )
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=tiny_video_vae(latent_channels),
        text_encoder=qwen25vl_encoder(), tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer"),
        transformer=transformer,
    )
    pipe.save_pretrained(path, safe_serialization=True)

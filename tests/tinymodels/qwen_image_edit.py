"""Tiny Qwen-Image-Edit: tiny Qwen-Image's transformer and Qwen2.5-VL (its one-block vision tower reads the
control image) plus the processor QwenImageEditPlusPipeline encodes its prompts with (Qwen2VLProcessor: image
processor, tokenizer with the vision tokens, video processor), and a video VAE with the real 8x downsampling:
the pipeline encodes the control image at ~1 MP whatever the output size, which a 2x VAE would make 65k
tokens."""

from __future__ import annotations

from pathlib import Path

from lora_operator.api.families import family_row

from .parts import TEXT_HIDDEN, write_qwen_tokenizer
from .qwen_image import SCHEDULER, qwen25vl_encoder

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
"""Qwen2.5-VL's vision tokens, in the order of the config's vision_start / vision_end / image / video ids."""


def build(path: Path) -> None:
    """Write the tiny model's diffusers folder to `path`."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    write_qwen_tokenizer(path / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    tokenizer.add_tokens(list(VISION_TOKENS), special_tokens=True)
    tokenizer.save_pretrained(path / "tokenizer")
    encoder = qwen25vl_encoder()
    config = encoder.config
    (config.vision_start_token_id, config.vision_end_token_id, config.image_token_id,
     config.video_token_id) = tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
    latent_channels = family_row("qwen-image-edit").latent_channels
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * latent_channels, out_channels=latent_channels, num_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN, axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=16, z_dim=latent_channels, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True], latents_mean=[0.1 * i - 0.8 for i in range(latent_channels)],
        latents_std=[1.0 + 0.1 * i for i in range(latent_channels)],
    )
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor())
    pipe = QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=encoder, tokenizer=tokenizer,
        processor=processor, transformer=transformer,
    )
    pipe.save_pretrained(path, safe_serialization=True)

"""Stable Diffusion XL: the SD1.5 recipe plus a second text encoder and size conditioning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lora_operator.api import ModelFamily, Previews

from ..speed import upload
from .base import Components, ModelVersion, Sizes, load_part, preview_guidance, tokenize, vae_encode
from .sd15 import IMPL_STABILITY_AI, SD15Family


class SDXLFamily(SD15Family):
    """SDXL: CLIP-L and OpenCLIP-G text encoders; add_time_ids from original size, crop and target."""

    family = ModelFamily.SDXL
    trainable_text_encoders = 2
    embedding_keys = ("clip_l", "clip_g")
    kohya_text_prefixes = ("lora_te1", "lora_te2")
    activation_gib_per_megapixel = 7.0  # H100, 1024 px: 33.9 GiB peak at batch 4, 6.5 GiB of weights

    def load(self, folder: Path, dtype: torch.dtype) -> Components:
        """Load UNet, VAE, both text encoders and tokenizers, and the DDPM scheduler."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        return Components(
            denoiser=load_part(UNet2DConditionModel, folder, "unet", torch_dtype=dtype),
            # The SDXL VAE overflows in fp16; it stays in float32 (it only encodes once per image).
            vae=load_part(AutoencoderKL, folder, "vae", torch_dtype=torch.float32),
            text_encoders=[
                load_part(CLIPTextModel, folder, "text_encoder", torch_dtype=dtype),
                load_part(CLIPTextModelWithProjection, folder, "text_encoder_2", torch_dtype=dtype),
            ],
            tokenizers=[load_part(CLIPTokenizer, folder, "tokenizer"), load_part(CLIPTokenizer, folder, "tokenizer_2")],
            noise_scheduler=load_part(DDPMScheduler, folder, "scheduler"),
            folder=folder,
        )

    def model_version(self, parts: Components) -> ModelVersion:
        """sdxl_base_v1-0 / stable-diffusion-xl-v1-base, as sd-scripts writes for every SDXL LoRA."""
        v_pred = parts.noise_scheduler.config.prediction_type == "v_prediction"
        return ModelVersion(kohya="sdxl_base_v1-0", architecture="stable-diffusion-xl-v1-base",
                            implementation=IMPL_STABILITY_AI, prediction_type="v" if v_pred else "epsilon")

    def encode_prompts(self, parts: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Penultimate hidden states of both encoders, concatenated; pooled output of the second."""
        hidden = []
        pooled = None
        for tokenizer, encoder in zip(parts.tokenizers, parts.text_encoders, strict=True):
            out = encoder(tokenize(tokenizer, prompts).to(encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return {"prompt_embeds": torch.cat(hidden, dim=-1), "pooled_prompt_embeds": pooled}

    def encode_images(self, parts: Components, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents (VAE in float32)."""
        return vae_encode(parts.vae, pixels.float())

    def _added_cond(self, cond: dict[str, torch.Tensor], sizes: Sizes, noisy: torch.Tensor) -> dict[str, Any]:
        time_ids = torch.tensor([[*orig, *crop, *target] for orig, crop, target in sizes], dtype=noisy.dtype)
        return {
            "added_cond_kwargs": {
                "text_embeds": cond["pooled_prompt_embeds"],
                "time_ids": upload(time_ids, noisy.device),
            }
        }

    def pipeline(self, parts: Components) -> Any:
        """A StableDiffusionXLPipeline over the components."""
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=parts.vae, text_encoder=parts.text_encoders[0], text_encoder_2=parts.text_encoders[1],
            tokenizer=parts.tokenizers[0], tokenizer_2=parts.tokenizers[1], unet=parts.denoiser,
            scheduler=parts.noise_scheduler,
        )

    def pipeline_kwargs(self, previews: Previews) -> dict[str, Any]:
        """Negative prompt and guidance scale."""
        return {"negative_prompt": previews.negative_prompt or None, "guidance_scale": preview_guidance(self, previews)}

"""Qwen-Image-Edit (2509 / 2511): Qwen-Image's transformer trained to edit, reading the control image twice,
as `QwenImageEditPlusPipeline` does at inference.

- In the transformer: the control's VAE latents, packed into 2x2 patches like the noisy latents, are appended
  after the noisy tokens; ``img_shapes`` lists the target's (frame, rows, cols) and then the control's, and
  the output is cut back to the noisy tokens (the loss is on those).
- In the text encoder: Qwen2.5-VL sees the control image (resized to about 384x384 pixels of area) through
  its processor, with ``Picture 1: <|vision_start|><|image_pad|><|vision_end|>`` before the instruction, so
  the text conditioning depends on the pair (``text_reads_control``: the Encoder caches it per caption and
  control image).

The pipeline encodes the control latents at about 1 MP whatever the output size; training joins them at the
pair's bucket (the target's size), which is the same area for the family's 1024 buckets.

Its LoRA files are Qwen-Image's: the same transformer modules, the same ComfyUI names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lora_operator.api import ModelFamily

from ..encode import join
from .base import Components, Sizes, load_part
from .flux import pack
from .qwen_image import QwenImageFamily


class QwenImageEditFamily(QwenImageFamily):
    """Qwen-Image-Edit: Qwen-Image plus the control image's tokens in the sequence and in the prompt."""

    family = ModelFamily.QWEN_IMAGE_EDIT
    text_reads_control = True
    """Its prompt encoding reads the control image (see the module docstring)."""

    def load(self, folder: Path, dtype: torch.dtype) -> Components:
        """Qwen-Image's parts plus the Qwen2.5-VL processor (image preprocessing and the image tokens)."""
        from transformers import Qwen2VLProcessor

        parts = super().load(folder, dtype)
        parts.extra["processor"] = load_part(Qwen2VLProcessor, folder, "processor")
        return parts

    def _pipe(self, parts: Components, transformer: Any) -> Any:
        from diffusers import QwenImageEditPlusPipeline

        return QwenImageEditPlusPipeline(
            scheduler=parts.noise_scheduler, vae=parts.vae, text_encoder=parts.text_encoders[0],
            tokenizer=parts.tokenizers[0], processor=parts.extra["processor"], transformer=transformer)

    def encode_prompts(self, parts: Components, prompts: list[str],
                       controls: list[Image.Image] | None = None) -> dict[str, torch.Tensor]:
        """QwenImageEditPlusPipeline's encoding of each (instruction, control image): the control resized to
        the pipeline's condition area, one prompt at a time (the pipeline's processor call takes one image
        list per batch). Without controls (a run without pairs), the instruction alone, as the pipeline
        encodes a prompt without an image."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
            CONDITION_IMAGE_SIZE,
            calculate_dimensions,
        )

        pipe = self._pipe(parts, None)
        encoder = parts.text_encoders[0]
        embeds, masks = [], []
        for j, prompt in enumerate(prompts):
            image = None
            if controls is not None:
                control = controls[j]
                width, height = calculate_dimensions(CONDITION_IMAGE_SIZE, control.width / control.height)[:2]
                image = [pipe.image_processor.resize(control, height, width)]
            embed, mask = pipe.encode_prompt(prompt=[prompt], image=image, device=encoder.device)
            if mask is None:
                mask = torch.ones(embed.shape[:2], dtype=torch.long, device=embed.device)
            embeds.append(embed)
            masks.append(mask)
        return {"prompt_embeds": join(embeds), "prompt_embeds_mask": join(masks)}

    def predict(
        self, parts: Components, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
        sizes: Sizes, control: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The transformer's velocity for the noisy tokens, with the control's tokens appended as
        QwenImageEditPlusPipeline appends them."""
        if control is None:
            return super().predict(parts, noisy, timesteps, cond, sizes)
        b, c, _, h, w = noisy.shape
        ch, cw = control.shape[-2:]
        tokens = self.join_control(pack(noisy[:, :, 0]), control)
        out = parts.denoiser(
            hidden_states=tokens,
            timestep=timesteps.to(noisy.device, noisy.dtype),
            encoder_hidden_states=cond["prompt_embeds"],
            encoder_hidden_states_mask=cond["prompt_embeds_mask"],
            img_shapes=[[(1, h // 2, w // 2), (1, ch // 2, cw // 2)]] * b,
            return_dict=False,
        )[0][:, : (h // 2) * (w // 2)]
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, 1, h, w)

    @staticmethod
    def join_control(tokens: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        """The control latents (B, C, 1, H, W) packed into 2x2 patches after the noisy tokens, as
        QwenImageEditPlusPipeline.prepare_latents packs them and its loop concatenates them."""
        return torch.cat([tokens, pack(control[:, :, 0]).to(tokens.dtype)], dim=1)

    def pipeline(self, parts: Components) -> Any:
        """A QwenImageEditPlusPipeline over the components (previews pass it the control image)."""
        return self._pipe(parts, parts.denoiser)

    def edit_inputs(self, control: Image.Image, size: tuple[int, int]) -> dict[str, Any]:
        """The held-out control image: the pipeline resizes it itself (to ~384x384 for the text encoder, to
        ~1 MP for the VAE) and makes an image of `size`."""
        return {"image": control}

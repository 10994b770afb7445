"""Flux.1 Kontext: the Flux.1 transformer trained to edit, reading a control image beside its own tokens.

Kontext is its own family value (``flux-kontext``), not ``flux`` with pairs: its base is a different
checkpoint (FLUX.1-Kontext-dev), diffusers gives it its own pipeline (`FluxKontextPipeline`, which takes
the image to edit) and ai-toolkit its own model type (``flux_kontext``), while ComfyUI runs it as a Flux
model whose reference latents join the sequence. Its LoRA files are Flux.1's (same modules, same BFL
names), so the exports are Flux.1's.

Training joins the control latents as `FluxKontextPipeline` does at inference: the control image's packed
2x2 patches are appended to the noisy image's tokens, with position ids (1, row, col) where the noisy
tokens have (0, row, col); the loss is on the noisy tokens' prediction only.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from lora_operator.api import ModelFamily

from .base import Components
from .flux import FluxFamily, image_ids, pack


class FluxKontextFamily(FluxFamily):
    """Flux.1 Kontext dev: Flux.1 plus the control image's tokens (frame 1) in the sequence."""

    family = ModelFamily.FLUX_KONTEXT

    def join_control(self, tokens: torch.Tensor, ids: torch.Tensor,
                     control: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the packed control latents and their ids (frame 1), as FluxKontextPipeline.prepare_latents."""
        h, w = control.shape[-2:]
        control_ids = image_ids(h, w, ids.device, ids.dtype, frame=1)
        return torch.cat([tokens, pack(control)], dim=1), torch.cat([ids, control_ids], dim=0)

    def pipeline(self, parts: Components) -> Any:
        """A FluxKontextPipeline over the components (previews pass it the control image as ``image``)."""
        from diffusers import FluxKontextPipeline

        return FluxKontextPipeline(
            scheduler=parts.noise_scheduler, vae=parts.vae, text_encoder=parts.text_encoders[0],
            tokenizer=parts.tokenizers[0], text_encoder_2=parts.text_encoders[1], tokenizer_2=parts.tokenizers[1],
            transformer=parts.denoiser,
        )

    def edit_inputs(self, control: Image.Image, size: tuple[int, int]) -> dict[str, Any]:
        """The control image at the preview size, kept there: FluxKontextPipeline would otherwise scale it to
        one of Kontext's preferred ~1 MP sizes (_auto_resize) and the output to max_area (1 MP), sizes the
        LoRA did not train at."""
        height, width = size
        return {"image": control.resize((width, height)), "max_area": height * width, "_auto_resize": False}

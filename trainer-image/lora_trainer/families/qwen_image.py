"""Qwen-Image: a 20B MMDiT (double-stream blocks) on 2x2 patches of a video VAE's latents, conditioned by
Qwen2.5-VL-7B hidden states.

Training follows QwenImagePipeline: its own prompt encoding (system template, last hidden state, the
template's tokens dropped, the prompt's tokens kept with a mask), latents of the causal 3-D VAE as one
frame, (B, 16, 1, H, W), normalised by the VAE's per-channel mean and std, and the transformer's time
sigma with its output the velocity. The scheduler shifts dynamically (``use_dynamic_shifting``): the
training sigmas take the shift the pipeline samples with at the batch's latent size (about 2 at 1024 px),
`flow.scheduler_shift`.

The LoRA adapts the attention and MLP layers of every block (modulation and the layers outside the blocks
stay frozen). ComfyUI's Qwen-Image model (``comfy/ldm/qwen_image/model.py``) uses the diffusers module
names, so its file (``checkpoints.formats: kohya``) is each module's path under ``diffusion_model.``
(``diffusion_model.transformer_blocks.0.attn.to_q``), which ComfyUI's ``model_lora_keys_unet`` maps for
every model (and its QwenImage branch without the prefix); diffusers' ``_convert_non_diffusers_qwen_lora``
reads the same file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lora_operator.api import Previews, Sampler

from .base import Components, KohyaLayer, ModelVersion, Sizes, load_one_encoder_model, preview_guidance
from .flow import SchedulerShiftedFlow
from .flux import pack

TRANSFORMER_TARGETS = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
]
"""Linear layers of a block (transformer_blocks.N) that get a LoRA: musubi-tuner's and ai-toolkit's set
without the modulation layers."""
_BLOCK_MODULE = re.compile(r"transformer_blocks\.(\d+)\.(.+)")
OUTSIDE_BLOCKS = r"(?!transformer_blocks\.).*"
IMPL_QWEN_IMAGE = "https://github.com/QwenLM/Qwen-Image"
DEFAULT_NEGATIVE = " "
"""QwenImagePipeline guides only with a negative prompt; its examples pass a blank one."""


class QwenImageFamily(SchedulerShiftedFlow):
    """Qwen-Image: flow matching with the dynamic (resolution-dependent) shift; the transformer predicts
    the velocity at time sigma."""

    release_text_encoders = True
    """Every caption is encoded once, then the LLM text encoder leaves the GPU (see Encoder.release_text)."""

    family = "qwen-image"
    denoiser_name = "transformer"
    kohya_network_module = "networks.lora_qwen_image"  # musubi-tuner's Qwen-Image network
    default_sampler = Sampler.FLOW_EULER
    preview_cfg: str | None = "guidance"
    """previews.guidance is QwenImagePipeline's true_cfg_scale (its guidance_scale is for distilled models)."""
    preview_negative = True
    denoiser_targets = TRANSFORMER_TARGETS
    denoiser_exclude = OUTSIDE_BLOCKS
    conv_targets: list[str] = []
    text_encoder_targets: list[str] = []
    trainable_text_encoders = 0
    """Qwen2.5-VL stays frozen (ai-toolkit: "probably won't work with qwen image"); no UI loads a LoRA on it."""
    embedding_keys: tuple[str, ...] = ()
    compile_mode = None
    compile_mode_batch_1 = None
    compile_blocks = None
    activation_gib_per_megapixel = 30.0  # estimate: Flux.1's 28 scaled by 60 double blocks x 3072 vs Flux's 57

    def load(self, folder: Path, dtype: torch.dtype) -> Components:
        """Load transformer, video VAE, Qwen2.5-VL and its tokenizer, and the flow-matching scheduler."""
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        return load_one_encoder_model(folder, dtype, QwenImageTransformer2DModel, AutoencoderKLQwenImage,
                                      Qwen2_5_VLForConditionalGeneration, AutoTokenizer)

    def kohya_layer(self, component: str, module: str) -> KohyaLayer:
        """ComfyUI's Qwen-Image names: the diffusers module path under ``diffusion_model.``."""
        match = _BLOCK_MODULE.fullmatch(module) if component == self.denoiser_name else None
        if match is None or match.group(2) not in TRANSFORMER_TARGETS:
            raise ValueError(f"{component}.{module}: no ComfyUI Qwen-Image name; only block layers are exported")
        return KohyaLayer(f"diffusion_model.{module}")

    def model_version(self, parts: Components) -> ModelVersion:
        """qwen-image."""
        return ModelVersion(kohya="qwen_image", architecture="qwen-image", implementation=IMPL_QWEN_IMAGE)

    def encode_prompts(self, parts: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """QwenImagePipeline's own encoding: embeddings (B, L, D) and their mask (1: token)."""
        from diffusers import QwenImagePipeline

        encoder = parts.text_encoders[0]
        pipe = QwenImagePipeline(scheduler=parts.noise_scheduler, vae=parts.vae, text_encoder=encoder,
                                 tokenizer=parts.tokenizers[0], transformer=None)
        embeds, mask = pipe.encode_prompt(list(prompts), device=encoder.device)
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return {"prompt_embeds": embeds, "prompt_embeds_mask": mask}

    def encode_images(self, parts: Components, pixels: torch.Tensor) -> torch.Tensor:
        """One-frame video latents (B, C, 1, H, W), normalised per channel as the pipeline un-normalises them."""
        vae = parts.vae
        latents = vae.encode(pixels.unsqueeze(2).to(vae.dtype)).latent_dist.mode()
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
        return (latents - mean) / std

    def predict(
        self, parts: Components, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
        sizes: Sizes,
    ) -> torch.Tensor:
        """The transformer's velocity on the packed frame, unpacked back to (B, C, 1, H, W)."""
        b, c, _, h, w = noisy.shape
        out = parts.denoiser(
            hidden_states=pack(noisy[:, :, 0]),
            timestep=timesteps.to(noisy.device, noisy.dtype),
            encoder_hidden_states=cond["prompt_embeds"],
            encoder_hidden_states_mask=cond["prompt_embeds_mask"],
            img_shapes=[[(1, h // 2, w // 2)]] * b,
            return_dict=False,
        )[0]
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, 1, h, w)

    def pipeline(self, parts: Components) -> Any:
        """A QwenImagePipeline over the components."""
        from diffusers import QwenImagePipeline

        return QwenImagePipeline(scheduler=parts.noise_scheduler, vae=parts.vae, text_encoder=parts.text_encoders[0],
                                 tokenizer=parts.tokenizers[0], transformer=parts.denoiser)

    def pipeline_kwargs(self, previews: Previews) -> dict[str, Any]:
        """True classifier-free guidance (previews.guidance; the pipeline's default is 4) with the negative
        prompt, blank when none is given (the pipeline guides only with one)."""
        return {"true_cfg_scale": preview_guidance(self, previews),
                "negative_prompt": previews.negative_prompt or DEFAULT_NEGATIVE}

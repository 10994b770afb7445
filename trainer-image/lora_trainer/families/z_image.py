"""Z-Image (Tongyi-MAI): a single-stream S3-DiT on 2x2 latent patches, conditioned by Qwen3-4B hidden states.

Training follows ZImagePipeline: prompts in Qwen3's chat layout, the second-to-last hidden state of
the prompt's own tokens (no padding) as caption features, the Flux.1 VAE's shifted and scaled
latents, and the transformer's time ``1 - sigma`` with its output the negative velocity. The sigma
shift is the scheduler's (Z-Image ships a fixed shift of 3; a dynamic-shifting config is sized at
the batch's latents, `flow.scheduler_shift`).

The LoRA adapts the attention and feed-forward layers of every block (main layers, noise refiner,
context refiner). Its ComfyUI file (``checkpoints.formats: kohya``) names each layer as ComfyUI's
Z-Image model (``comfy/ldm/lumina/model.py``, the original Alpha-VLLM NextDiT layout) does, under
``diffusion_model.``: q, k and v are one ``attention.qkv`` there (fused on export, `export.fuse`) and
``to_out.0`` is ``attention.out``; ComfyUI's ``model_lora_keys_unet`` maps ``diffusion_model.<module>``
onto that module's weight for every model. The table follows ``comfy/utils.py: z_image_to_diffusers``.

Z-Image-Turbo is step-distilled (Decoupled-DMD): a LoRA trained directly on it breaks the
distillation (ai-toolkit trains Turbo only through a de-distillation "training adapter", its
train_lora_zimage_turbo_32gb.yaml: "Required for Turbo: training adapter prevents quality degradation
from distilled model"). We have no such adapter, so a Turbo checkpoint is refused, not warned about: the
job would spend its GPU hours on a LoRA that breaks the model; the message names the base to use
(the row's ``distilled``: the operator checks baseModel.uri, the loop the model folder with
`base.refuse_distilled`). Both variants share config and scheduler (fixed shift 3), so the name is what
tells them apart.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lora_operator.api import Previews, Sampler

from .base import Components, KohyaLayer, ModelVersion, Sizes, load_one_encoder_model, preview_guidance, vae_encode
from .flow import SchedulerShiftedFlow

BLOCK_LAYERS = {
    "attention.to_q": KohyaLayer("attention.qkv", 0, 3),
    "attention.to_k": KohyaLayer("attention.qkv", 1, 3),
    "attention.to_v": KohyaLayer("attention.qkv", 2, 3),
    "attention.to_out.0": KohyaLayer("attention.out"),
    "feed_forward.w1": KohyaLayer("feed_forward.w1"),
    "feed_forward.w2": KohyaLayer("feed_forward.w2"),
    "feed_forward.w3": KohyaLayer("feed_forward.w3"),
}
"""diffusers module of a block -> its module in ComfyUI's (NextDiT) Z-Image model, same block path."""
BLOCKS = ("layers", "noise_refiner", "context_refiner")
_BLOCK_MODULE = re.compile(rf"({'|'.join(BLOCKS)})\.(\d+)\.(.+)")
OUTSIDE_BLOCKS = rf"(?!({'|'.join(BLOCKS)})\.).*"
"""Embedders, final layer and (Omni) SigLIP refiner: no Z-Image trainer adapts them."""
MAX_SEQUENCE_LENGTH = 512
"""ZImagePipeline's default prompt length."""
IMPL_Z_IMAGE = "https://github.com/Tongyi-MAI/Z-Image"


class ZImageFamily(SchedulerShiftedFlow):
    """Z-Image: flow matching at the scheduler's shift; the transformer sees 1 - sigma, predicts -velocity."""

    release_text_encoders = True
    """Every caption is encoded once, then the LLM text encoder leaves the GPU (see Encoder.release_text)."""

    family = "z-image"
    denoiser_name = "transformer"
    kohya_network_module = "networks.lora_zimage"  # musubi-tuner's Z-Image network
    default_sampler = Sampler.FLOW_EULER
    preview_cfg: str | None = "guidance"
    preview_negative = True
    denoiser_targets = list(BLOCK_LAYERS)
    denoiser_exclude = OUTSIDE_BLOCKS
    conv_targets: list[str] = []
    text_encoder_targets: list[str] = []
    trainable_text_encoders = 0
    """Qwen3-4B stays frozen: no Z-Image trainer adapts it and no UI loads a LoRA on it."""
    embedding_keys: tuple[str, ...] = ()
    compile_mode = None
    compile_mode_batch_1 = None
    compile_blocks = None
    activation_gib_per_megapixel = 21.0  # estimate: Flux.1's 28 scaled by width x depth (3840 x 34 vs 3072 x 57)

    def __init__(self, max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        self.max_sequence_length = max_sequence_length

    def load(self, folder: Path, dtype: torch.dtype) -> Components:
        """Load transformer, VAE, Qwen3 and its tokenizer, and the scheduler."""
        from diffusers import AutoencoderKL, ZImageTransformer2DModel
        from transformers import AutoModel, AutoTokenizer

        return load_one_encoder_model(folder, dtype, ZImageTransformer2DModel, AutoencoderKL, AutoModel,
                                      AutoTokenizer)

    def kohya_layer(self, component: str, module: str) -> KohyaLayer:
        """ComfyUI's Z-Image names: ``diffusion_model.layers.0.attention.qkv`` (q, k, v fused), ``...attention.out``,
        ``...feed_forward.w1``; the refiners likewise (``noise_refiner.0...``, ``context_refiner.0...``)."""
        match = _BLOCK_MODULE.fullmatch(module) if component == self.denoiser_name else None
        layer = BLOCK_LAYERS.get(match.group(3)) if match else None
        if layer is None:
            raise ValueError(f"{component}.{module}: no ComfyUI Z-Image name; only block layers are exported")
        return KohyaLayer(f"diffusion_model.{match.group(1)}.{match.group(2)}.{layer.name}", layer.part, layer.parts)

    def model_version(self, parts: Components) -> ModelVersion:
        """z-image (the base; Turbo is refused at load)."""
        return ModelVersion(kohya="zimage", architecture="z-image", implementation=IMPL_Z_IMAGE)

    def encode_prompts(self, parts: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """ZImagePipeline's own encoding (chat template, hidden_states[-2], the prompt's tokens only), padded
        to the batch's longest with a mask (1: token)."""
        encoder = parts.text_encoders[0]
        pipe = self._text_pipeline(parts)
        embeds, _ = pipe.encode_prompt(list(prompts), device=encoder.device, do_classifier_free_guidance=False,
                                       max_sequence_length=self.max_sequence_length)
        longest = max(len(e) for e in embeds)
        mask = torch.zeros(len(embeds), longest, dtype=torch.bool, device=embeds[0].device)
        padded = embeds[0].new_zeros(len(embeds), longest, embeds[0].shape[-1])
        for i, e in enumerate(embeds):
            padded[i, : len(e)] = e
            mask[i, : len(e)] = True
        return {"prompt_embeds": padded, "prompt_embeds_mask": mask}

    def _text_pipeline(self, parts: Components) -> Any:
        from diffusers import ZImagePipeline

        return ZImagePipeline(scheduler=parts.noise_scheduler, vae=parts.vae, text_encoder=parts.text_encoders[0],
                              tokenizer=parts.tokenizers[0], transformer=None)

    def encode_images(self, parts: Components, pixels: torch.Tensor) -> torch.Tensor:
        """Shifted and scaled latents of the Flux.1 VAE."""
        return vae_encode(parts.vae, pixels)

    def predict(
        self, parts: Components, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
        sizes: Sizes,
    ) -> torch.Tensor:
        """The velocity: the transformer takes a list of (C, 1, H, W) images and caption features and time
        1 - sigma, and returns the negative velocity (ZImagePipeline negates it before the Euler step)."""
        embeds, mask = cond["prompt_embeds"], cond["prompt_embeds_mask"].bool()
        captions = [embeds[i][mask[i]] for i in range(len(embeds))]
        images = list(noisy.unsqueeze(2).unbind(0))
        time = (1 - timesteps).to(noisy.device, noisy.dtype)
        out = parts.denoiser(images, time, captions, return_dict=False)[0]
        return -torch.stack(out).squeeze(2)

    def pipeline(self, parts: Components) -> Any:
        """A ZImagePipeline over the components."""
        from diffusers import ZImagePipeline

        return ZImagePipeline(scheduler=parts.noise_scheduler, vae=parts.vae, text_encoder=parts.text_encoders[0],
                              tokenizer=parts.tokenizers[0], transformer=parts.denoiser)

    def pipeline_kwargs(self, previews: Previews) -> dict[str, Any]:
        """Classifier-free guidance (the base model samples with CFG; ai-toolkit previews at 4), the negative
        prompt and the prompt length."""
        return {"guidance_scale": preview_guidance(self, previews), "negative_prompt": previews.negative_prompt or None,
                "max_sequence_length": self.max_sequence_length}

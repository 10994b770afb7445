"""Flux: a rectified-flow transformer on packed 2x2 latent patches, CLIP-L pooled + T5 sequence text.

The LoRA adapts every linear layer inside the double- and single-stream blocks, as sd-scripts does,
and nothing outside them (the input / output projections and the time embeddings stay frozen).
Its kohya file uses the Black Forest Labs module names (``lora_unet_double_blocks_0_img_attn_qkv``),
which ComfyUI, Forge and InvokeAI load onto the original Flux model: there q, k and v of a block are
one ``qkv`` linear layer, and a single block's q, k, v and MLP input are one ``linear1``, so their
LoRAs are fused on export (see `export.fuse`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lora_operator.api import Flow, ModelFamily, Previews, Sampler, Training

from ..errors import ConfigError
from ..speed import upload
from .base import (
    Components,
    KohyaLayer,
    ModelVersion,
    Sizes,
    kohya_text_layer,
    load_part,
    preview_guidance,
    tokenize,
    vae_encode,
)
from .flow import FlowMatching
from .sd15 import CLIP_TARGETS

DOUBLE_BLOCK_LAYERS = {
    "attn.to_q": KohyaLayer("img_attn_qkv", 0, 3),
    "attn.to_k": KohyaLayer("img_attn_qkv", 1, 3),
    "attn.to_v": KohyaLayer("img_attn_qkv", 2, 3),
    "attn.to_out.0": KohyaLayer("img_attn_proj"),
    "attn.add_q_proj": KohyaLayer("txt_attn_qkv", 0, 3),
    "attn.add_k_proj": KohyaLayer("txt_attn_qkv", 1, 3),
    "attn.add_v_proj": KohyaLayer("txt_attn_qkv", 2, 3),
    "attn.to_add_out": KohyaLayer("txt_attn_proj"),
    "ff.net.0.proj": KohyaLayer("img_mlp_0"),
    "ff.net.2": KohyaLayer("img_mlp_2"),
    "ff_context.net.0.proj": KohyaLayer("txt_mlp_0"),
    "ff_context.net.2": KohyaLayer("txt_mlp_2"),
    "norm1.linear": KohyaLayer("img_mod_lin"),
    "norm1_context.linear": KohyaLayer("txt_mod_lin"),
}
"""diffusers module of a double-stream block (transformer_blocks.N) -> its BFL layer (double_blocks.N)."""
SINGLE_BLOCK_LAYERS = {
    "attn.to_q": KohyaLayer("linear1", 0, 4),
    "attn.to_k": KohyaLayer("linear1", 1, 4),
    "attn.to_v": KohyaLayer("linear1", 2, 4),
    "proj_mlp": KohyaLayer("linear1", 3, 4),
    "proj_out": KohyaLayer("linear2"),
    "norm.linear": KohyaLayer("modulation_lin"),
}
"""diffusers module of a single-stream block (single_transformer_blocks.N) -> its BFL layer (single_blocks.N)."""
BLOCKS = {"transformer_blocks": ("double_blocks", DOUBLE_BLOCK_LAYERS),
          "single_transformer_blocks": ("single_blocks", SINGLE_BLOCK_LAYERS)}
_BLOCK_MODULE = re.compile(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)")


def bfl_block_layer(module: str,
                    blocks: dict[str, tuple[str, dict[str, KohyaLayer]]]) -> tuple[str, str, KohyaLayer] | None:
    """The BFL block list, block index and layer of a diffusers transformer-block module (Flux.1, Chroma and
    Flux.2 name their blocks alike; `blocks` maps each family's layers); None outside the blocks or for a
    layer without a BFL name."""
    match = _BLOCK_MODULE.fullmatch(module)
    bfl, layers = blocks[match.group(1)] if match else (None, {})
    layer = layers.get(match.group(3)) if match else None
    return None if layer is None else (bfl, match.group(2), layer)


def bfl_kohya_layer(component: str, module: str, blocks: dict[str, tuple[str, dict[str, KohyaLayer]]], *,
                    prefix: str, sep: str, model: str) -> KohyaLayer:
    """The file's name of a transformer-block module: `prefix` + BFL block list, index and layer joined by
    `sep` (sd-scripts: ``lora_unet_`` and ``_``; ComfyUI: ``diffusion_model.`` and ``.``).

    Raises:
        ValueError: a module outside the blocks, or without a BFL name (`model` names the family there).
    """
    found = bfl_block_layer(module, blocks) if component == "transformer" else None
    if found is None:
        raise ValueError(f"{component}.{module}: no {model} name; only transformer block layers are exported")
    bfl, index, layer = found
    return KohyaLayer(sep.join((f"{prefix}{bfl}", index, layer.name)), layer.part, layer.parts)
TRANSFORMER_TARGETS = list(dict.fromkeys([*DOUBLE_BLOCK_LAYERS, *SINGLE_BLOCK_LAYERS]))
OUTSIDE_BLOCKS = r"(?!(single_)?transformer_blocks\.).*"
"""Every module outside the blocks (proj_out, x_embedder, context_embedder, norm_out, time_text_embed):
no other Flux trainer adapts them, and InvokeAI's kohya detector refuses a file that does."""
IMPL_FLUX = "https://github.com/black-forest-labs/flux"
T5_MAX_LENGTH = 512


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) patch tokens, as FluxPipeline packs them."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack`: (B, H/2 * W/2, 4C) patch tokens -> (B, C, H, W) latents."""
    b = tokens.shape[0]
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype, frame: int = 0) -> torch.Tensor:
    """Positional ids (frame, row, col) of the packed latent patches (frame 1: Kontext's control image)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 0] = frame
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return upload(ids.reshape(-1, 3), device, dtype)


class FluxFamily(FlowMatching):
    """Flux.1 (dev / schnell): flow matching, loss on the velocity noise - latents."""

    family = ModelFamily.FLUX
    denoiser_name = "transformer"
    kohya_text_prefixes = ("lora_te1",)
    kohya_network_module = "networks.lora_flux"
    default_sampler = Sampler.FLOW_EULER
    preview_cfg: str | None = "true_guidance"
    """previews.guidance is distilled guidance; FluxPipeline's true_cfg_scale is classifier-free guidance."""
    preview_negative = True
    denoiser_targets = TRANSFORMER_TARGETS
    denoiser_exclude = OUTSIDE_BLOCKS
    conv_targets: list[str] = []
    text_encoder_targets = CLIP_TARGETS
    trainable_text_encoders = 1
    embedding_keys = ("emb_params",)
    """Only CLIP-L; T5 stays frozen (as every Flux trainer does)."""
    compile_mode = None  # from two images per micro-batch the GPU, not the launches, sets the pace
    compile_mode_batch_1 = "reduce-overhead"
    """One image leaves gaps between the kernels of a step that CUDA graphs close."""
    compile_blocks = None
    activation_gib_per_megapixel = 28.0  # H100, 1024 px: 60.4 GiB peak at batch 1, 31.4 GiB of weights

    def __init__(self, max_sequence_length: int = T5_MAX_LENGTH):
        self.max_sequence_length = max_sequence_length

    def load(self, folder: Path, dtype: torch.dtype) -> Components:
        """Load transformer, VAE, CLIP-L + T5 and their tokenizers, and the flow-matching scheduler."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        t5_tokenizer = load_part(T5TokenizerFast, folder, "tokenizer_2")
        self.max_sequence_length = min(self.max_sequence_length, t5_tokenizer.model_max_length)
        return Components(
            denoiser=load_part(FluxTransformer2DModel, folder, "transformer", torch_dtype=dtype),
            vae=load_part(AutoencoderKL, folder, "vae", torch_dtype=dtype),
            text_encoders=[
                load_part(CLIPTextModel, folder, "text_encoder", torch_dtype=dtype),
                load_part(T5EncoderModel, folder, "text_encoder_2", torch_dtype=dtype),
            ],
            tokenizers=[load_part(CLIPTokenizer, folder, "tokenizer"), t5_tokenizer],
            noise_scheduler=load_part(FlowMatchEulerDiscreteScheduler, folder, "scheduler"),
            folder=folder,
        )

    def kohya_layer(self, component: str, module: str) -> KohyaLayer:
        """sd-scripts' Flux names: ``lora_unet_`` + the BFL module path (``double_blocks_0_img_attn_qkv``,
        ``single_blocks_0_linear1``); CLIP-L layers as ``lora_te1_text_model_...``."""
        if component != self.denoiser_name:
            return kohya_text_layer(self.kohya_text_prefixes, component, module)
        return bfl_kohya_layer(component, module, BLOCKS, prefix="lora_unet_", sep="_", model="Flux.1 kohya (BFL)")

    def configure(self, parts: Components, training: Training, previews: Previews | None = None) -> None:
        """The flow options; a training or preview guidance only for a guidance-distilled transformer (dev,
        not schnell).

        Raises:
            ConfigError: training.flow.guidance or previews.guidance set for a transformer without a guidance
                embedder (FluxPipeline would sample without it: the setting would be silently ignored).
        """
        distilled = bool(getattr(parts.denoiser.config, "guidance_embeds", False))  # Chroma's config has none
        # flow.guidance against its default: the pod's resolved spec spells every field out, so
        # model_fields_set holds every field there (a set value equal to the default is let through)
        if training.flow.guidance != Flow().guidance and not distilled:
            raise ConfigError("training.flow.guidance: this Flux transformer is not guidance-distilled (no "
                              "guidance embedder, e.g. Flux.1 schnell); leave guidance out")
        guidance_is_distilled = self.preview_cfg != "guidance"  # Chroma's previews.guidance is its real CFG
        if (previews is not None and guidance_is_distilled and not distilled
                and previews.guidance is not None):
            raise ConfigError(f"previews.guidance: {previews.guidance:g} is distilled guidance, and this Flux "
                              "transformer has no guidance embedder (e.g. Flux.1 schnell): its previews would "
                              "ignore it; leave guidance out, or set previews.trueGuidance above 1 for "
                              "classifier-free guidance")
        super().configure(parts, training, previews)

    def model_version(self, parts: Components) -> ModelVersion:
        """flux1 / flux-1-dev (guidance-distilled: the transformer embeds guidance) or flux-1-schnell."""
        dev = bool(parts.denoiser.config.guidance_embeds)
        return ModelVersion(kohya="flux1", architecture="flux-1-dev" if dev else "flux-1-schnell",
                            implementation=IMPL_FLUX)

    def encode_prompts(self, parts: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """CLIP-L pooled output and the T5 hidden-state sequence."""
        clip, t5 = parts.text_encoders
        pooled = clip(tokenize(parts.tokenizers[0], prompts).to(clip.device)).pooler_output
        ids = tokenize(parts.tokenizers[1], prompts, self.max_sequence_length).to(t5.device)
        return {"prompt_embeds": t5(ids)[0], "pooled_prompt_embeds": pooled}

    def encode_images(self, parts: Components, pixels: torch.Tensor) -> torch.Tensor:
        """Shifted and scaled VAE latents."""
        return vae_encode(parts.vae, pixels)

    def predict(
        self, parts: Components, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
        sizes: Sizes, control: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The transformer's velocity for the noisy tokens, unpacked back to (B, C, H, W)."""
        transformer = parts.denoiser
        b, c, h, w = noisy.shape
        text = cond["prompt_embeds"]
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.flow.guidance, device=noisy.device, dtype=noisy.dtype)
        tokens, ids = pack(noisy), image_ids(h, w, noisy.device, noisy.dtype)
        if control is not None:
            tokens, ids = self.join_control(tokens, ids, control.to(noisy.dtype))
        out = transformer(
            hidden_states=tokens,
            timestep=timesteps.to(noisy.device, noisy.dtype),
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=text,
            txt_ids=torch.zeros(text.shape[1], 3, device=noisy.device, dtype=noisy.dtype),
            img_ids=ids,
            return_dict=False,
        )[0]
        return unpack(out[:, : (h // 2) * (w // 2)], c, h, w)

    def join_control(self, tokens: torch.Tensor, ids: torch.Tensor,
                     control: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input tokens and position ids with a control image's joined (edit families only).

        Raises:
            ConfigError: Flux.1 itself reads no control image (its row trains no edits).
        """
        raise ConfigError(f"dataset.pairs: family {self.family} trains no edit pairs")

    def pipeline(self, parts: Components) -> Any:
        """A FluxPipeline over the components."""
        from diffusers import FluxPipeline

        return FluxPipeline(
            scheduler=parts.noise_scheduler, vae=parts.vae, text_encoder=parts.text_encoders[0],
            tokenizer=parts.tokenizers[0], text_encoder_2=parts.text_encoders[1], tokenizer_2=parts.tokenizers[1],
            transformer=parts.denoiser,
        )

    def pipeline_kwargs(self, previews: Previews) -> dict[str, Any]:
        """Distilled guidance and the T5 length; with previews.trueGuidance above 1 also classifier-free
        guidance against the negative prompt (the empty prompt by default; FluxPipeline guides only when
        given one)."""
        kwargs = {"guidance_scale": preview_guidance(self, previews), "max_sequence_length": self.max_sequence_length}
        if previews.true_guidance > 1:
            kwargs |= {"true_cfg_scale": previews.true_guidance, "negative_prompt": previews.negative_prompt}
        return kwargs

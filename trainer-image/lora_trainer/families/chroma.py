"""Chroma: Flux.1-schnell pruned, with T5 as its only text encoder and an approximator instead of modulation.

The transformer is Flux's (same double- and single-stream blocks, same packed 2x2 latent patches and
position ids); what differs: no CLIP (no pooled text vector, nothing to train an embedding for), the
per-block modulation comes from one small MLP (``distilled_guidance_layer``) instead of a ``norm*.linear``
layer in every block, the T5 padding is masked (all but the first pad token), and previews use real
classifier-free guidance with a negative prompt.

The LoRA adapts the same block layers as Flux.1's minus the modulation layers Chroma does not have;
T5 stays frozen (ai-toolkit and SimpleTuner train no Chroma text encoder either).

Its one-file ("kohya") format is ComfyUI's generic one: the original (BFL) module path under
``diffusion_model.``, e.g. ``diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight``. ComfyUI's
``comfy/lora.py`` ``model_lora_keys_unet`` maps ``diffusion_model.<path>`` onto the weight
``diffusion_model.<path>.weight`` of every model it loads (Chroma's ``comfy/ldm/chroma/model.py`` keeps the
BFL names ``double_blocks`` / ``single_blocks`` / ``img_attn.qkv`` / ``linear1``), and
``comfy/weight_adapter/lora.py`` reads ``.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha`` under it.
q, k, v (and a single block's MLP input) are one fused layer there, so their LoRAs are fused on export
as for Flux.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lora_operator.api import ModelFamily, Previews

from .base import Components, KohyaLayer, ModelVersion, Sizes, load_one_encoder_model, preview_guidance
from .flux import OUTSIDE_BLOCKS, FluxFamily, bfl_kohya_layer, image_ids, pack, unpack

DOUBLE_BLOCK_LAYERS = {
    "attn.to_q": KohyaLayer("img_attn.qkv", 0, 3),
    "attn.to_k": KohyaLayer("img_attn.qkv", 1, 3),
    "attn.to_v": KohyaLayer("img_attn.qkv", 2, 3),
    "attn.to_out.0": KohyaLayer("img_attn.proj"),
    "attn.add_q_proj": KohyaLayer("txt_attn.qkv", 0, 3),
    "attn.add_k_proj": KohyaLayer("txt_attn.qkv", 1, 3),
    "attn.add_v_proj": KohyaLayer("txt_attn.qkv", 2, 3),
    "attn.to_add_out": KohyaLayer("txt_attn.proj"),
    "ff.net.0.proj": KohyaLayer("img_mlp.0"),
    "ff.net.2": KohyaLayer("img_mlp.2"),
    "ff_context.net.0.proj": KohyaLayer("txt_mlp.0"),
    "ff_context.net.2": KohyaLayer("txt_mlp.2"),
}
"""diffusers module of a double-stream block (transformer_blocks.N) -> its BFL module (double_blocks.N),
as diffusers' ``convert_chroma_transformer_checkpoint_to_diffusers`` splits them."""
SINGLE_BLOCK_LAYERS = {
    "attn.to_q": KohyaLayer("linear1", 0, 4),
    "attn.to_k": KohyaLayer("linear1", 1, 4),
    "attn.to_v": KohyaLayer("linear1", 2, 4),
    "proj_mlp": KohyaLayer("linear1", 3, 4),
    "proj_out": KohyaLayer("linear2"),
}
"""diffusers module of a single-stream block (single_transformer_blocks.N) -> its BFL module (single_blocks.N)."""
BLOCKS = {"transformer_blocks": ("double_blocks", DOUBLE_BLOCK_LAYERS),
          "single_transformer_blocks": ("single_blocks", SINGLE_BLOCK_LAYERS)}
COMFY_PREFIX = "diffusion_model."
"""ComfyUI's prefix of the diffusion model's weights (its generic LoRA key format)."""
IMPL_CHROMA = "https://huggingface.co/lodestones/Chroma"
"""sd-scripts' ``modelspec.implementation`` of Chroma (library/sai_model_spec.py, IMPL_CHROMA)."""


class ChromaFamily(FluxFamily):
    """Chroma (Chroma1-HD / -Base): flow matching on Flux's packed patches, T5 text only."""

    family = ModelFamily.CHROMA
    preview_cfg = "guidance"
    """ChromaPipeline's guidance_scale is classifier-free guidance (Chroma embeds no distilled guidance)."""
    denoiser_targets = list(dict.fromkeys([*DOUBLE_BLOCK_LAYERS, *SINGLE_BLOCK_LAYERS]))
    denoiser_exclude = OUTSIDE_BLOCKS
    trainable_text_encoders = 0
    """T5 stays frozen; with no CLIP there is no embedding to train either."""
    text_encoder_targets: list[str] = []
    embedding_keys: tuple[str, ...] = ()
    activation_gib_per_megapixel = 28.0  # Flux.1's blocks and widths (measured there; Chroma not measured yet)

    def load(self, folder: Path, dtype: torch.dtype) -> Components:
        """Load transformer, VAE, T5 and its tokenizer, and the flow-matching scheduler."""
        from diffusers import AutoencoderKL, ChromaTransformer2DModel
        from transformers import T5EncoderModel, T5TokenizerFast

        parts = load_one_encoder_model(folder, dtype, ChromaTransformer2DModel, AutoencoderKL, T5EncoderModel,
                                       T5TokenizerFast)
        self.max_sequence_length = min(self.max_sequence_length, parts.tokenizers[0].model_max_length)
        return parts

    def kohya_layer(self, component: str, module: str) -> KohyaLayer:
        """ComfyUI's generic name: ``diffusion_model.`` + the BFL module (``double_blocks.0.img_attn.qkv``)."""
        return bfl_kohya_layer(component, module, BLOCKS, prefix=COMFY_PREFIX, sep=".", model="Chroma (BFL)")

    def model_version(self, parts: Components) -> ModelVersion:
        """sd-scripts' names for Chroma: architecture ``chroma``, implementation lodestones/Chroma."""
        return ModelVersion(kohya="chroma", architecture="chroma", implementation=IMPL_CHROMA)

    def encode_prompts(self, parts: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """T5 hidden states with the padding masked, and the mask the transformer uses (ChromaPipeline's:
        every real token and the first pad token)."""
        t5, tokenizer = parts.text_encoders[0], parts.tokenizers[0]
        tokens = tokenizer(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                           return_tensors="pt")
        mask = tokens.attention_mask.to(t5.device)
        embeds = t5(tokens.input_ids.to(t5.device), attention_mask=mask)[0]
        keep = torch.arange(mask.shape[1], device=mask.device)[None, :] <= mask.sum(dim=1, keepdim=True)
        return {"prompt_embeds": embeds, "prompt_attention_mask": keep.to(embeds.dtype)}

    def predict(
        self, parts: Components, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
        sizes: Sizes, control: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The transformer's velocity, unpacked back to (B, C, H, W); no guidance or pooled input."""
        b, c, h, w = noisy.shape
        text = cond["prompt_embeds"]
        tokens = pack(noisy)
        # As ChromaPipeline._prepare_attention_mask: the text mask, then every image token.
        mask = torch.cat([cond["prompt_attention_mask"].to(noisy.device),
                          torch.ones(b, tokens.shape[1], device=noisy.device, dtype=torch.bool)], dim=1)
        out = parts.denoiser(
            hidden_states=tokens,
            timestep=timesteps.to(noisy.device, noisy.dtype),
            encoder_hidden_states=text,
            txt_ids=torch.zeros(text.shape[1], 3, device=noisy.device, dtype=noisy.dtype),
            img_ids=image_ids(h, w, noisy.device, noisy.dtype),
            attention_mask=mask,
            return_dict=False,
        )[0]
        return unpack(out, c, h, w)

    def pipeline(self, parts: Components) -> Any:
        """A ChromaPipeline over the components."""
        from diffusers import ChromaPipeline

        return ChromaPipeline(scheduler=parts.noise_scheduler, vae=parts.vae, text_encoder=parts.text_encoders[0],
                              tokenizer=parts.tokenizers[0], transformer=parts.denoiser)

    def pipeline_kwargs(self, previews: Previews) -> dict[str, Any]:
        """Real classifier-free guidance with the negative prompt, and the T5 length."""
        return {"guidance_scale": preview_guidance(self, previews), "negative_prompt": previews.negative_prompt,
                "max_sequence_length": self.max_sequence_length}

"""Flux.2 (dev) and Flux.2 Klein: a rectified-flow transformer on 2x2 patches of 32-channel latents,
conditioned on three stacked hidden-state layers of a decoder LLM (Mistral-Small-3 for dev, Qwen3 for Klein).

Both rows share this module; they differ in data: the text encoder and the layers the pipeline reads,
the guidance embedding (dev is guidance-distilled, Klein uses classifier-free guidance), and the
pipeline class. Conditioning is computed with the pipelines' own encoding functions, so training sees
exactly what previews and users' inference see.

The shift is resolution-dependent: the Flux.2 pipelines set the scheduler's ``mu`` from the image's
token count (`compute_empirical_mu`) and shift the sigmas exponentially (``e^mu / (e^mu + 1/s - 1)``,
the SD3 shift with factor e^mu). Training draws logit-normal sigmas and shifts them with the mu of the
batch's own token count at the pipeline's default 50 steps, so each bucket trains on the noise levels
the sampler visits at that size. The token count is only known with the latents, so `sample_timesteps`
returns the unshifted draw and `noisy_and_target` / `predict` shift it (`sigmas`).

The LoRA adapts every linear layer inside the double- and single-stream blocks (the modulation
layers, shared by all blocks in Flux.2, stay frozen, as outside-block layers do for Flux.1). The
kohya file uses the Black Forest Labs module names of the original checkpoint, where a double block's
q, k and v are one ``qkv`` linear layer (fused on export, `export.fuse`); a single block's
``to_qkv_mlp_proj`` / ``to_out`` already are BFL's ``linear1`` / ``linear2``. The names follow:
- diffusers ``convert_flux2_transformer_checkpoint_to_diffusers`` (single_file_utils: BFL checkpoint ->
  diffusers modules) and ``_convert_kohya_flux2_lora_to_diffusers`` (lora_conversion_utils: reads
  ``lora_unet_double_blocks_0_img_attn_qkv`` with lora_down / lora_up / alpha, splits the qkv);
- ComfyUI ``comfy/lora.py`` ``model_lora_keys_unet``: every ``diffusion_model.<path>.weight`` of the
  loaded Flux.2 model is reachable as ``lora_unet_<path with _>`` (and as ``diffusion_model.<path>``), and
  ``comfy/ldm/flux`` names Flux.2's layers as BFL does (double_blocks.N.img_attn.qkv, single_blocks.N.linear1).
Edit pairs (Klein only, ``flux2-klein`` with ``dataset.pairs``): Klein is one checkpoint for text-to-image
and multi-reference editing, and diffusers runs both with Flux2KleinPipeline (its ``image`` argument),
ComfyUI with the same model plus ``ReferenceLatent`` nodes, and ai-toolkit trains both under one model
type with control images; so there is no ``flux2-klein-edit`` value (Kontext differs: its own checkpoint
and pipeline). The control latents join the sequence as the pipeline joins a reference (`join_reference`).

The ``lora_unet_`` spelling is chosen over ``diffusion_model.<path>.lora_down``: diffusers reads lora_down /
alpha only with the ``lora_unet_`` prefix, while ComfyUI takes both.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lora_operator.api import ModelFamily, Previews, Sampler, Training

from ..errors import ConfigError, ModelError
from . import flux
from .base import Components, KohyaLayer, ModelVersion, Sizes, load_part, preview_guidance
from .flow import FlowMatching, shifted

log = logging.getLogger(__name__)

DOUBLE_BLOCK_LAYERS = {
    **{module: layer for module, layer in flux.DOUBLE_BLOCK_LAYERS.items() if module.startswith("attn.")},
    "ff.linear_in": KohyaLayer("img_mlp_0"),
    "ff.linear_out": KohyaLayer("img_mlp_2"),
    "ff_context.linear_in": KohyaLayer("txt_mlp_0"),
    "ff_context.linear_out": KohyaLayer("txt_mlp_2"),
}
"""diffusers module of a Flux.2 double-stream block (transformer_blocks.N) -> its BFL layer (double_blocks.N):
the attention layers are Flux.1's; the MLPs are diffusers' linear_in / linear_out (SwiGLU), the modulations
moved out of the blocks."""
SINGLE_BLOCK_LAYERS = {
    "attn.to_qkv_mlp_proj": KohyaLayer("linear1"),
    "attn.to_out": KohyaLayer("linear2"),
}
"""diffusers module of a single-stream block (single_transformer_blocks.N) -> its BFL layer (single_blocks.N):
diffusers keeps BFL's fusion here, so nothing is fused on export."""
BLOCKS = {"transformer_blocks": ("double_blocks", DOUBLE_BLOCK_LAYERS),
          "single_transformer_blocks": ("single_blocks", SINGLE_BLOCK_LAYERS)}
TRANSFORMER_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                       "linear_in", "linear_out", "to_qkv_mlp_proj"]
"""peft target suffixes; a single block's ``attn.to_out`` (BFL's linear2) is named per block (`targets_for`):
the suffix alone would also name the double blocks' ``attn.to_out`` ModuleList, and a diffusers file whose
config lists it makes peft warn on load (DiffSynth-Studio's Flux.2 LoRA script lists them the same way)."""
EXCLUDE = r"(?!(single_)?transformer_blocks\.).*"
"""Every module outside the blocks (embedders, shared modulations, output layer)."""


def targets_for(num_single_layers: int) -> list[str]:
    """The peft targets of a transformer with `num_single_layers` single blocks."""
    return TRANSFORMER_TARGETS + [f"single_transformer_blocks.{i}.attn.to_out" for i in range(num_single_layers)]
IMPL_FLUX2 = "https://github.com/black-forest-labs/flux2"
MAX_SEQUENCE_LENGTH = 512
"""Text tokens per prompt: the pipelines' default."""
MU_STEPS = 50
"""Sampling steps the training shift assumes (the pipelines' default num_inference_steps)."""
DEFAULT_GUIDANCE = 4.0
"""The pipelines' default guidance_scale (dev: distilled guidance, Klein base: classifier-free guidance)."""


FLUX1_GIB_PER_BLOCK_WIDTH = 28.0 / (57 * 3072)
"""Flux.1's measured saved activations (28 GiB per megapixel, H100, bf16: families/flux.py) per block and
unit of width; Flux.2's blocks are the same kinds (MLP ratio 3 instead of 4), so their activations are
estimated from this until measured."""


def activations_per_megapixel(config: Any) -> float:
    """Estimated saved activations (GiB per training megapixel, no checkpointing) of a Flux.2 transformer."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key)
    blocks = get("num_layers") + get("num_single_layers")
    return FLUX1_GIB_PER_BLOCK_WIDTH * blocks * get("num_attention_heads") * get("attention_head_dim")


def compute_mu(image_seq_len: int, num_steps: int = MU_STEPS) -> float:
    """The Flux.2 pipelines' ``mu`` for `image_seq_len` latent tokens (diffusers' compute_empirical_mu)."""
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    return compute_empirical_mu(image_seq_len=image_seq_len, num_steps=num_steps)


class Flux2Family(FlowMatching):
    """Flux.2 dev: guidance-distilled, Mistral-Small-3 text encoder."""

    family = ModelFamily.FLUX2
    denoiser_name = "transformer"
    kohya_network_module = "networks.lora_flux_2"
    """musubi-tuner's Flux.2 LoRA network (sd-scripts has none for Flux.2)."""
    default_sampler = Sampler.FLOW_EULER
    preview_cfg: str | None = None
    """Flux2Pipeline takes distilled guidance only."""
    preview_negative = False
    default_preview_guidance = DEFAULT_GUIDANCE
    denoiser_targets = targets_for(48)
    """Set for the loaded transformer's single blocks by `load`."""
    denoiser_exclude = EXCLUDE
    conv_targets: list[str] = []
    text_encoder_targets: list[str] = []
    trainable_text_encoders = 0
    """The 4-24B decoder LLMs stay frozen (every Flux.2 trainer does so); their outputs are cached."""
    embedding_keys: tuple[str, ...] = ()
    release_text_encoders = True
    """Encode every caption once, then move the text encoder off the GPU (`LoraRecipe`)."""
    compile_mode = None
    compile_mode_batch_1 = None
    compile_blocks = None
    activation_gib_per_megapixel = activations_per_megapixel(  # FLUX.2-dev's 8 + 48 blocks of width 6144: 55
        {"num_layers": 8, "num_single_layers": 48, "num_attention_heads": 48, "attention_head_dim": 128})
    """Set from the loaded transformer's size by `load` (Klein 4B and 9B differ)."""
    pipeline_name = "Flux2Pipeline"
    text_layers = (10, 20, 30)
    """Hidden states the pipeline stacks into the conditioning (Flux2Pipeline.encode_prompt)."""
    architecture = "flux-2-dev"

    def __init__(self, max_sequence_length: int = MAX_SEQUENCE_LENGTH):
        self.max_sequence_length = max_sequence_length

    # ------------------------------------------------------------------ loading
    def load_text(self, folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
        """The Mistral-Small-3 encoder and its processor (the tokenizer folder holds a Pixtral processor)."""
        from transformers import AutoProcessor, Mistral3ForConditionalGeneration

        return (load_part(Mistral3ForConditionalGeneration, folder, "text_encoder", torch_dtype=dtype),
                load_part(AutoProcessor, folder, "tokenizer"))

    def check_variant(self, folder: Path, transformer: Any) -> None:
        """Refuse a base model this family cannot train from (dev: every FLUX.2-dev folder is fine)."""

    def load(self, folder: Path, dtype: torch.dtype) -> Components:
        """Load transformer, VAE, text encoder and tokenizer, and the flow-matching scheduler."""
        from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

        transformer = load_part(Flux2Transformer2DModel, folder, "transformer", torch_dtype=dtype)
        self.check_variant(folder, transformer)
        self.activation_gib_per_megapixel = activations_per_megapixel(transformer.config)
        self.denoiser_targets = targets_for(transformer.config.num_single_layers)
        text_encoder, tokenizer = self.load_text(folder, dtype)
        return Components(
            denoiser=transformer,
            vae=load_part(AutoencoderKLFlux2, folder, "vae", torch_dtype=dtype),
            text_encoders=[text_encoder],
            tokenizers=[tokenizer],
            noise_scheduler=load_part(FlowMatchEulerDiscreteScheduler, folder, "scheduler"),
            folder=folder,
        )

    # ------------------------------------------------------------------ names
    def kohya_layer(self, component: str, module: str) -> KohyaLayer:
        """``lora_unet_`` + the BFL module path (``double_blocks_0_img_attn_qkv``, ``single_blocks_0_linear1``)."""
        return flux.bfl_kohya_layer(component, module, BLOCKS, prefix="lora_unet_", sep="_", model="Flux.2 BFL")

    def model_version(self, parts: Components) -> ModelVersion:
        """flux2 / flux-2-dev (or the Klein size)."""
        return ModelVersion(kohya="flux2", architecture=self.architecture_of(parts), implementation=IMPL_FLUX2)

    def architecture_of(self, parts: Components) -> str:
        """``modelspec.architecture`` of the base (without the adapter suffix)."""
        return self.architecture

    # ------------------------------------------------------------------ encoding
    def pipeline_class(self) -> Any:
        import diffusers

        return getattr(diffusers, self.pipeline_name)

    def encode_prompts(self, parts: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The stacked hidden states, by the pipeline's own prompt encoding (chat template, system message)."""
        embeds, _ = self.pipeline(parts).encode_prompt(
            prompts, device=parts.text_encoders[0].device, max_sequence_length=self.max_sequence_length,
            text_encoder_out_layers=self.text_layers)
        return {"prompt_embeds": embeds}

    def encode_images(self, parts: Components, pixels: torch.Tensor) -> torch.Tensor:
        """VAE latents (posterior mode) normalised by the VAE's batch-norm statistics, as the pipeline does
        on its 2x2 patches; returned unpatched, (B, 32, H/8, W/8), so crops and buckets stay spatial."""
        pipe = self.pipeline_class()
        vae = parts.vae
        latents = pipe._patchify_latents(vae.encode(pixels.to(vae.dtype)).latent_dist.mode())
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents)
        return pipe._unpatchify_latents((latents - mean) / std)

    # ------------------------------------------------------------------ objective
    def configure(self, parts: Components, training: Training, previews: Previews | None = None) -> None:
        """The flow options, less the shift: Flux.2 shifts by resolution inside the objective, as its pipeline
        does (`sigmas`), so a fixed or second resolution shift is refused rather than applied twice.

        Raises:
            ConfigError: training.flow.shift or resolutionShift set.
        """
        if training.flow.shift is not None or training.flow.resolution_shift:
            raise ConfigError(f"training.flow: {self.family} already shifts its timesteps by resolution as its "
                              "pipeline does; leave shift and resolutionShift out")
        super().configure(parts, training, previews)

    def shift_for(self, latents_shape: torch.Size | tuple[int, ...]) -> float:
        """e^mu for latents of `latents_shape` (B, C, H, W): their 2x2 patch count sets mu."""
        return math.exp(compute_mu((latents_shape[-2] // 2) * (latents_shape[-1] // 2)))

    def sigmas(self, timesteps: torch.Tensor, latents_shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """The drawn (unshifted) timesteps shifted for this latent size."""
        return shifted(timesteps, self.shift_for(latents_shape))

    def noisy_and_target(
        self, parts: Components, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The flow interpolation at the shifted sigmas of this latent size."""
        return super().noisy_and_target(parts, latents, noise, self.sigmas(timesteps, latents.shape))

    def predict(
        self, parts: Components, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
        sizes: Sizes, control: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The transformer's velocity on the patched, packed latents, unpacked back to (B, C, H, W);
        with `control` (edit pairs) the reference tokens are joined first (`join_reference`)."""
        pipe = self.pipeline_class()
        transformer = parts.denoiser
        b = noisy.shape[0]
        patches = pipe._patchify_latents(noisy)
        tokens, ids = pipe._pack_latents(patches), pipe._prepare_latent_ids(patches).to(noisy.device)
        if control is not None:
            tokens, ids = self.join_reference(tokens, ids, control.to(noisy.dtype))
        text = cond["prompt_embeds"].to(noisy.dtype)
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.flow.guidance, device=noisy.device, dtype=noisy.dtype)
        out = transformer(
            hidden_states=tokens,
            encoder_hidden_states=text,
            timestep=self.sigmas(timesteps, noisy.shape).to(noisy.device, noisy.dtype),
            img_ids=ids,
            txt_ids=pipe._prepare_text_ids(text).to(noisy.device),
            guidance=guidance,
            return_dict=False,
        )[0]
        out = out[:, : patches.shape[-2] * patches.shape[-1]]  # the reference tokens' outputs are dropped
        return pipe._unpatchify_latents(out.permute(0, 2, 1).reshape(patches.shape))

    def join_reference(self, tokens: torch.Tensor, ids: torch.Tensor,
                       control: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append a reference image's packed patches and their position ids (time coordinate 10, the first
        reference's), as Flux2KleinPipeline.prepare_image_latents (and Flux2Pipeline's) join them.

        Args:
            tokens: The noisy image's packed patches (B, N, C).
            ids: Their position ids (B, N, 4).
            control: The control images' latents (B, 32, H, W), as `encode_images` returns them.
        """
        pipe = self.pipeline_class()
        patches = pipe._patchify_latents(control)
        reference_ids = pipe._prepare_image_ids([patches[:1]]).to(ids.device).expand(patches.shape[0], -1, -1)
        return torch.cat([tokens, pipe._pack_latents(patches)], dim=1), torch.cat([ids, reference_ids], dim=1)

    # ------------------------------------------------------------------ previews
    def pipeline(self, parts: Components) -> Any:
        """The family's pipeline over the components."""
        return self.pipeline_class()(
            scheduler=parts.noise_scheduler, vae=parts.vae, text_encoder=parts.text_encoders[0],
            tokenizer=parts.tokenizers[0], transformer=parts.denoiser,
        )

    def pipeline_kwargs(self, previews: Previews) -> dict[str, Any]:
        """The pipeline's guidance (4) unless previews.guidance is set, and the text length."""
        return {"guidance_scale": preview_guidance(self, previews), "max_sequence_length": self.max_sequence_length,
                "text_encoder_out_layers": self.text_layers}

    def prompt_kwargs(self, cond: dict[str, torch.Tensor], negative: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Pipeline arguments for cached conditioning (previews after the text encoder was released); dev has
        no negative prompt (distilled guidance)."""
        return {"prompt_embeds": cond["prompt_embeds"]}


REFERENCE_MIN_SIDE = 64
"""Flux2ImageProcessor.check_image_input's smallest reference side in pixels."""
DISTILLED_NAME = re.compile(r"klein-(4|9)b")
"""BFL's repo names of the distilled Klein (the bases are FLUX.2-klein-base-4B / -9B)."""
KLEIN_BASES = {3072: "black-forest-labs/FLUX.2-klein-base-4B", 4096: "black-forest-labs/FLUX.2-klein-base-9B"}
"""Transformer width -> the undistilled Klein of that size (the one to train LoRAs on)."""


class Flux2KleinFamily(Flux2Family):
    """Flux.2 Klein (4B / 9B base): no guidance embedding, Qwen3 text encoder, classifier-free guidance.

    The step-distilled FLUX.2-klein-4B / -9B are refused: their few-step sampling is a property of
    weights that a LoRA trained with the flow objective pulls back toward the undistilled model, so the
    LoRA either breaks the few-step sampling or learns little (BFL and the trainers say to train on the
    base and apply the LoRA to either). A warning would let a GPU-hours job run into that result.
    """

    family = ModelFamily.FLUX2_KLEIN
    preview_cfg = "guidance"
    """Flux2KleinPipeline's guidance_scale is classifier-free guidance, against the empty prompt only (it
    takes no negative prompt text)."""
    pipeline_name = "Flux2KleinPipeline"
    text_layers = (9, 18, 27)
    """Hidden states Flux2KleinPipeline.encode_prompt stacks."""
    activation_gib_per_megapixel = activations_per_megapixel(  # Klein 4B's 5 + 20 blocks of width 3072: 12
        {"num_layers": 5, "num_single_layers": 20, "num_attention_heads": 24, "attention_head_dim": 128})

    def load_text(self, folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
        """The Qwen3 encoder and its tokenizer."""
        from transformers import Qwen2TokenizerFast, Qwen3ForCausalLM

        return (load_part(Qwen3ForCausalLM, folder, "text_encoder", torch_dtype=dtype),
                load_part(Qwen2TokenizerFast, folder, "tokenizer"))

    def check_variant(self, folder: Path, transformer: Any) -> None:
        """Refuse a step-distilled Klein, naming the base of the same size.

        Detected from the pipeline config (``is_distilled: true`` in model_index.json, which the distilled
        repos carry and Flux2KleinPipeline reads) or, for a folder without it, from BFL's repo name
        (FLUX.2-klein-4B / -9B without "base").

        Raises:
            ModelError: a distilled variant.
        """
        index = Path(folder) / "model_index.json"
        config = json.loads(index.read_text()) if index.is_file() else {}
        name = Path(folder).name.lower()
        if not (config.get("is_distilled") or (DISTILLED_NAME.search(name) and "base" not in name)):
            return
        width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        base = KLEIN_BASES.get(width, " or ".join(KLEIN_BASES.values()))
        raise ModelError(
            f"baseModel.uri: {folder} is a step-distilled FLUX.2 Klein (is_distilled in model_index.json, or its "
            f"name); a LoRA trained on it breaks its few-step sampling. Train on the undistilled base, {base}, and "
            "apply the LoRA to either")

    def architecture_of(self, parts: Components) -> str:
        """flux-2-klein-4b / flux-2-klein-9b from the transformer's width."""
        config = parts.denoiser.config
        size = {3072: "4b", 4096: "9b"}.get(config.num_attention_heads * config.attention_head_dim)
        return f"flux-2-klein-{size}" if size else "flux-2-klein"

    def pipeline(self, parts: Components) -> Any:
        """A Flux2KleinPipeline (the base: real classifier-free guidance)."""
        return self.pipeline_class()(
            scheduler=parts.noise_scheduler, vae=parts.vae, text_encoder=parts.text_encoders[0],
            tokenizer=parts.tokenizers[0], transformer=parts.denoiser, is_distilled=False,
        )

    def edit_inputs(self, control: Image.Image, size: tuple[int, int]) -> dict[str, Any]:
        """The control image as the pipeline's reference ``image``, at the preview size (the pipeline keeps a
        reference under 1 MP at its own size, cropped to a multiple of 16, as training saw it), scaled up
        where a side is under the pipeline's minimum reference side (REFERENCE_MIN_SIDE, which it refuses)."""
        height, width = size
        scale = max(1.0, REFERENCE_MIN_SIDE / min(height, width))
        return {"image": [control.resize((round(width * scale), round(height * scale)))]}

    def prompt_kwargs(self, cond: dict[str, torch.Tensor], negative: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Cached conditioning and that of the empty prompt, the pipeline's negative for guidance."""
        return {"prompt_embeds": cond["prompt_embeds"], "negative_prompt_embeds": negative["prompt_embeds"]}

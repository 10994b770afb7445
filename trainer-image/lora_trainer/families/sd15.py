"""Stable Diffusion 1.x: a UNet with DDPM noise (epsilon or v-prediction), one CLIP text encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lora_operator.api import BiasStrategy, ModelFamily, Previews, Sampler, TimestepBias, Training

from ..errors import ConfigError
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

UNET_LINEAR_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
UNET_CONV_TARGETS = ["conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"]
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
IMPL_DIFFUSERS = "diffusers"
IMPL_STABILITY_AI = "https://github.com/Stability-AI/generative-models"
"""modelspec.implementation values sd-scripts writes for LoRAs (SD1.x/2.x: diffusers, SDXL: SGM)."""


class SD15Family:
    """Stable Diffusion 1.x (and 2.x: v-prediction comes from the scheduler config)."""

    family = ModelFamily.SD15
    denoiser_name = "unet"
    kohya_text_prefixes = ("lora_te",)
    """sd-scripts' prefix per text encoder (one encoder: lora_te)."""
    kohya_network_module = "networks.lora"
    default_sampler = Sampler.EULER_A
    timestep_weights: torch.Tensor | None = None
    """Draw weights of the training timesteps under training.timestepBias (`configure`); None: uniform."""
    preview_cfg: str | None = "guidance"
    preview_negative = True
    default_preview_guidance = 7.0
    denoiser_targets = UNET_LINEAR_TARGETS
    denoiser_exclude = None
    conv_targets = UNET_CONV_TARGETS
    text_encoder_targets = CLIP_TARGETS
    trainable_text_encoders = 1
    embedding_keys = ("emb_params",)
    compile_mode = "reduce-overhead"  # H100: 2.3x / 1.3x faster steps at batch 1 / 4 than the default mode
    compile_mode_batch_1 = None
    compile_blocks = ("BasicTransformerBlock", "ResnetBlock2D", "Downsample2D", "Upsample2D")
    """diffusers' repeated block of the UNets is the transformer block alone; the ResNet blocks between
    them (group norms, SiLUs, residual adds, the LoCon convolutions) would run eagerly, kernel by kernel."""
    activation_gib_per_megapixel = 4.5  # H100, 512 px: 6.5 GiB peak at batch 4, 2.0 GiB of weights

    def load(self, folder: Path, dtype: torch.dtype) -> Components:
        """Load UNet, VAE, CLIP text encoder and tokenizer, and the DDPM scheduler."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        return Components(
            denoiser=load_part(UNet2DConditionModel, folder, "unet", torch_dtype=dtype),
            vae=load_part(AutoencoderKL, folder, "vae", torch_dtype=dtype),
            text_encoders=[load_part(CLIPTextModel, folder, "text_encoder", torch_dtype=dtype)],
            tokenizers=[load_part(CLIPTokenizer, folder, "tokenizer")],
            noise_scheduler=load_part(DDPMScheduler, folder, "scheduler"),
            folder=folder,
        )

    def kohya_layer(self, component: str, module: str) -> KohyaLayer:
        """sd-scripts' names: ``lora_unet_`` + the diffusers UNet module path with dots as underscores,
        which ComfyUI and A1111 map to the original (LDM / SGM) UNet; CLIP layers by `kohya_text_layer`."""
        if component == self.denoiser_name:
            return KohyaLayer(f"lora_unet_{module.replace('.', '_')}")
        return kohya_text_layer(self.kohya_text_prefixes, component, module)

    def model_version(self, parts: Components) -> ModelVersion:
        """sd_v1 (stable-diffusion-v1), or sd_v2 (stable-diffusion-v2-512 / -768-v) for an OpenCLIP-H encoder;
        ``_v`` and prediction type v for a v-prediction scheduler."""
        v_pred = parts.noise_scheduler.config.prediction_type == "v_prediction"
        v2 = parts.text_encoders[0].config.hidden_size == 1024  # SD 2.x: OpenCLIP ViT-H (SD 1.x: CLIP-L, 768)
        arch = ("stable-diffusion-v2-768-v" if v_pred else "stable-diffusion-v2-512") if v2 else "stable-diffusion-v1"
        return ModelVersion(kohya=("sd_v2" if v2 else "sd_v1") + ("_v" if v_pred else ""), architecture=arch,
                            implementation=IMPL_DIFFUSERS, prediction_type="v" if v_pred else "epsilon", v2=v2)

    def encode_prompts(self, parts: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The last hidden state of the CLIP text encoder."""
        encoder = parts.text_encoders[0]
        ids = tokenize(parts.tokenizers[0], prompts).to(encoder.device)
        return {"prompt_embeds": encoder(ids)[0]}

    def encode_images(self, parts: Components, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents."""
        return vae_encode(parts.vae, pixels)

    def configure(self, parts: Components, training: Training, previews: Previews | None = None) -> None:
        """Take training.timestepBias (the API refuses training.flow for epsilon / v families).

        Raises:
            ConfigError: a bias range that ends past the scheduler's timesteps.
        """
        total = parts.noise_scheduler.config.num_train_timesteps
        bias = training.timestep_bias
        if bias.strategy == BiasStrategy.RANGE and bias.end > total:
            raise ConfigError(f"training.timestepBias.end: {bias.end} is past the base model's {total} timesteps")
        self.timestep_weights = timestep_weights(bias, total)

    def sample_timesteps(self, parts: Components, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Integer timesteps in [0, num_train_timesteps): uniform, or weighted by training.timestepBias."""
        total = parts.noise_scheduler.config.num_train_timesteps
        if self.timestep_weights is None:
            return torch.randint(0, total, (len(latents),), generator=generator)
        return torch.multinomial(self.timestep_weights, len(latents), replacement=True, generator=generator)

    def fixed_timesteps(self, parts: Components, n: int, latent_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """`n` timesteps spread evenly over the schedule, away from both ends."""
        total = parts.noise_scheduler.config.num_train_timesteps
        return torch.linspace(total * 0.1, total * 0.9, n).long()

    def noisy_and_target(
        self, parts: Components, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM forward process; the target is the noise (epsilon) or the velocity (v_prediction)."""
        scheduler = parts.noise_scheduler
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            return noisy, scheduler.get_velocity(latents, noise, timesteps)
        return noisy, noise

    def predict(
        self, parts: Components, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
        sizes: Sizes,
    ) -> torch.Tensor:
        """The UNet output."""
        unet = parts.denoiser
        return unet(noisy, timesteps.to(noisy.device), cond["prompt_embeds"], **self._added_cond(cond, sizes, noisy))[0]

    def _added_cond(self, cond: dict[str, torch.Tensor], sizes: Sizes, noisy: torch.Tensor) -> dict[str, Any]:
        return {}

    def loss_weights(self, parts: Components, timesteps: torch.Tensor, min_snr_gamma: float) -> torch.Tensor:
        """Min-SNR-gamma weights (Hang et al. 2023), or ones when gamma is 0."""
        if min_snr_gamma <= 0:
            return torch.ones(len(timesteps))
        from diffusers.training_utils import compute_snr

        snr = compute_snr(parts.noise_scheduler, timesteps.cpu())
        clipped = torch.clamp(snr, max=min_snr_gamma)
        if parts.noise_scheduler.config.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped / snr

    def pipeline(self, parts: Components) -> Any:
        """A StableDiffusionPipeline over the components (no safety checker)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=parts.vae, text_encoder=parts.text_encoders[0], tokenizer=parts.tokenizers[0], unet=parts.denoiser,
            scheduler=parts.noise_scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )

    def pipeline_kwargs(self, previews: Previews) -> dict[str, Any]:
        """Negative prompt and guidance scale."""
        return {"negative_prompt": previews.negative_prompt or None, "guidance_scale": preview_guidance(self, previews)}


def timestep_weights(bias: TimestepBias, total: int) -> torch.Tensor | None:
    """Relative draw weights of the `total` timesteps under `bias` (None: uniform): 1 each, `multiplier`
    for the first (earlier) or last (later) `portion` of them or for begin to end (range)."""
    if bias.strategy == BiasStrategy.NONE:
        return None
    weights = torch.ones(total)
    count = max(1, int(bias.portion * total))
    chosen = {BiasStrategy.EARLIER: slice(0, count), BiasStrategy.LATER: slice(total - count, total),
              BiasStrategy.RANGE: slice(bias.begin, bias.end)}[bias.strategy]
    weights[chosen] *= bias.multiplier
    if weights.sum() == 0:
        raise ConfigError("training.timestepBias: multiplier 0 over every timestep leaves none to draw")
    return weights

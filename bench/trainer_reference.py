"""The reference: a plain text-to-image LoRA step written the way the diffusers examples write it.

Follows `examples/text_to_image/train_text_to_image_lora.py` (SD1.5),
`train_text_to_image_lora_sdxl.py` (SDXL) and `examples/dreambooth/train_dreambooth_lora_flux.py`
(Flux): every step converts the images to tensors, tokenizes the captions, runs the VAE
(``latent_dist.sample()``) and the text encoders, then the denoiser with its LoRA; AdamW,
gradient clipping, an LR scheduler, the loss gathered and read back with ``.item()``. No
caching, no compile.

To compare like with like (and fit Flux twice on one GPU), the reference shares the frozen
base weights with our recipe and adds its own LoRA as a second peft adapter named
``reference`` with the same targets, rank and alpha; `activate` switches the denoiser
between the two adapters between steps (outside the timed region). Gradient checkpointing,
precision and the accelerate autocast wrapper are the recipe's, i.e. the same settings.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ADAPTER = "reference"
REFERENCE_FAMILIES = ("sd15", "sdxl", "flux")
"""The families a diffusers example loop exists for here (the others' bench cases time ours only)."""


def to_tensor(image: Any) -> torch.Tensor:
    """transforms.ToTensor() + Normalize([0.5], [0.5]) of the examples, without torchvision."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5


class ReferenceLoop:
    """One diffusers-example training step on the recipe's frozen parts.

    Args:
        recipe: A set-up `LoraRecipe` (its parts, family, accelerator, settings).
    """

    def __init__(self, recipe: Any):
        from accelerate import Accelerator
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        t, network = recipe.training, recipe.spec.network
        self.recipe = recipe
        self.family = recipe.family.family.value
        self.parts = recipe.parts
        self.unet = recipe.train_parts.denoiser  # already wrapped by accelerate (autocast), as prepare() would
        self.device = recipe.device
        self.weight_dtype = next(self.parts.text_encoders[0].parameters()).dtype
        self.accelerator = Accelerator(mixed_precision=recipe.mixed_precision)
        with warnings.catch_warnings():  # peft warns about a second adapter: that is the point here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            self.parts.denoiser.add_adapter(
                LoraConfig(r=network.dim, lora_alpha=network.alpha, init_lora_weights="gaussian",
                           target_modules=list(recipe.family.denoiser_targets),
                           exclude_modules=recipe.family.denoiser_exclude),
                adapter_name=ADAPTER,
            )
        cast_training_params(self.parts.denoiser, dtype=torch.float32)
        self.params = [p for n, p in self.parts.denoiser.named_parameters() if f".{ADAPTER}." in n]
        optimizer = torch.optim.AdamW(self.params, lr=t.unet_learning_rate, betas=(0.9, 0.999),
                                      weight_decay=t.optimizer.weight_decay, eps=1e-08)
        scheduler = get_scheduler("constant", optimizer=optimizer)
        self.optimizer, self.lr_scheduler = self.accelerator.prepare(optimizer, scheduler)
        self.max_grad_norm = t.max_grad_norm
        self.step_fn = {"sd15": self._sd15_loss, "sdxl": self._sdxl_loss, "flux": self._flux_loss}[self.family]

    def activate(self) -> None:
        """Make the reference LoRA the denoiser's active (and trainable) adapter."""
        self.parts.denoiser.set_adapter(ADAPTER)

    def step(self, batch: list[tuple[Any, str, tuple]]) -> float:
        """One optimizer step on `batch`: (PIL image, caption, (original_size, crop_top_left)) triples."""
        pixel_values = torch.stack([to_tensor(image) for image, _, _ in batch])
        pixel_values = pixel_values.to(memory_format=torch.contiguous_format).float().to(self.device)
        captions = [caption for _, caption, _ in batch]
        loss = self.step_fn(pixel_values, captions, [size for _, _, size in batch])
        avg_loss = self.accelerator.gather(loss.repeat(len(batch))).mean()
        train_loss = avg_loss.item()
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients and self.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        return train_loss

    def _ids(self, index: int, captions: list[str]) -> torch.Tensor:
        tokenizer = self.parts.tokenizers[index]
        return tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def _sd15_loss(self, pixel_values, captions, sizes) -> torch.Tensor:
        vae, scheduler = self.parts.vae, self.parts.noise_scheduler
        latents = vae.encode(pixel_values.to(self.weight_dtype)).latent_dist.sample()
        latents = latents * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), device=latents.device).long()
        noisy_latents = scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = self.parts.text_encoders[0](self._ids(0, captions), return_dict=False)[0]
        model_pred = self.unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        return F.mse_loss(model_pred.float(), noise.float(), reduction="mean")

    def _sdxl_loss(self, pixel_values, captions, sizes) -> torch.Tensor:
        vae, scheduler = self.parts.vae, self.parts.noise_scheduler
        model_input = vae.encode(pixel_values.to(vae.dtype)).latent_dist.sample()
        model_input = (model_input * vae.config.scaling_factor).to(self.weight_dtype)
        noise = torch.randn_like(model_input)
        bsz = model_input.shape[0]
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), device=model_input.device).long()
        noisy_model_input = scheduler.add_noise(model_input, noise, timesteps)
        height, width = pixel_values.shape[-2:]
        add_time_ids = torch.cat([
            torch.tensor([list(original) + list(crop) + [height, width]], device=self.device, dtype=self.weight_dtype)
            for original, crop in sizes
        ])
        prompt_embeds_list, pooled_prompt_embeds = [], None
        for i, text_encoder in enumerate(self.parts.text_encoders):  # the example's encode_prompt
            out = text_encoder(self._ids(i, captions), output_hidden_states=True, return_dict=False)
            pooled_prompt_embeds = out[0]
            prompt_embeds_list.append(out[-1][-2].view(bsz, out[-1][-2].shape[1], -1))
        prompt_embeds = torch.concat(prompt_embeds_list, dim=-1)
        added = {"time_ids": add_time_ids, "text_embeds": pooled_prompt_embeds.view(bsz, -1)}
        model_pred = self.unet(noisy_model_input, timesteps, prompt_embeds, added_cond_kwargs=added,
                               return_dict=False)[0]
        return F.mse_loss(model_pred.float(), noise.float(), reduction="mean")

    def _flux_loss(self, pixel_values, captions, sizes) -> torch.Tensor:
        from diffusers import FluxPipeline

        vae, scheduler, transformer = self.parts.vae, self.parts.noise_scheduler, self.parts.denoiser
        clip, t5 = self.parts.text_encoders
        pooled_prompt_embeds = clip(self._ids(0, captions), output_hidden_states=False).pooler_output
        prompt_embeds = t5(self._ids(1, captions), output_hidden_states=False)[0]
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=self.device, dtype=self.weight_dtype)
        model_input = vae.encode(pixel_values.to(vae.dtype)).latent_dist.sample()
        model_input = ((model_input - vae.config.shift_factor) * vae.config.scaling_factor).to(self.weight_dtype)
        bsz, c, h, w = model_input.shape
        image_ids = FluxPipeline._prepare_latent_image_ids(bsz, h // 2, w // 2, self.device, self.weight_dtype)
        noise = torch.randn_like(model_input)
        u = torch.rand(bsz)  # compute_density_for_timestep_sampling, weighting_scheme "none"
        indices = (u * scheduler.config.num_train_timesteps).long()
        timesteps = scheduler.timesteps[indices].to(self.device)
        sigmas = self._get_sigmas(timesteps).to(self.weight_dtype)
        noisy_model_input = (1.0 - sigmas) * model_input + sigmas * noise
        packed = FluxPipeline._pack_latents(noisy_model_input, bsz, c, h, w)
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.tensor([1.0], device=self.device).expand(bsz)
        model_pred = self.unet(
            hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
            pooled_projections=pooled_prompt_embeds, encoder_hidden_states=prompt_embeds, txt_ids=text_ids,
            img_ids=image_ids, return_dict=False,
        )[0]
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        model_pred = FluxPipeline._unpack_latents(model_pred, h * scale, w * scale, scale)
        target = noise - model_input
        return torch.mean(((model_pred.float() - target.float()) ** 2).reshape(bsz, -1), 1).mean()

    def _get_sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The example's get_sigmas, with its per-sample ``.nonzero().item()`` lookups."""
        scheduler = self.parts.noise_scheduler
        sigmas = scheduler.sigmas.to(device=self.device, dtype=torch.float32)
        schedule_timesteps = scheduler.timesteps.to(self.device)
        step_indices = [(schedule_timesteps == t).nonzero().item() for t in timesteps]
        return sigmas[step_indices].flatten().view(-1, 1, 1, 1)

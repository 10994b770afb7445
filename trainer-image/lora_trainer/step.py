"""One optimizer step: the micro-batches' losses, backward, clipping, optimizer and LR updates.

`OptimizerStep` is the part of `loop.LoraRecipe` that a step runs (and nothing else, so that
`bench/trainer.py` times exactly what training runs per step). Randomness of micro-batch *n*
(timesteps, noise, flips, caption shuffles, LoRA dropout) comes from generators seeded with (seed, n).
"""

from __future__ import annotations

import logging
import random

import torch
import torch.nn.functional as F

from .data import Sample
from .noise import make_noise
from .speed import training_attention, upload

log = logging.getLogger(__name__)


def micro_batch_index(step: int, k: int, accumulation: int, world: int, rank: int) -> int:
    """The micro-batch (0-based, over the run) of accumulation step `k` of optimizer step `step` on `rank`.

    Data parallel: the `world` workers take consecutive micro-batches, so together they walk
    through each data pass once, and step `step` has consumed ``step x accumulation x world``.
    """
    return ((step - 1) * accumulation + k) * world + rank


def draw_seed(seed: int, index: int) -> int:
    """The seed of micro-batch `index`: independent streams per batch, stable across resumes."""
    return (seed * 1_000_003 + index * 7_919 + 17) % (2**63 - 1)


class OptimizerStep:
    """The optimizer step of `loop.LoraRecipe` (`train_step`) and the loss it minimizes."""

    def train_step(self, step: int) -> torch.Tensor:
        """One optimizer step (1-based): its micro-batches, clipping, optimizer and LR updates.

        Everything a step costs and nothing else (no progress, no epoch ends), so that
        `bench/trainer.py` times exactly what `train` runs per step.

        Returns:
            The step's loss (mean over its micro-batches), still on the device: reading it would
            make the host wait for the step.
        """
        t = self.training
        text_now = self.adapter.trains_text and (step <= self.text_steps or not self.adapter.text_ratio_applies)
        self.adapter.set_text_training(text_now)
        if self.adapter.trains_text and step == self.text_steps + 1:  # the text weights stop changing here
            self.encoder.forget_text()
        loss = None
        for k in range(t.gradient_accumulation):
            index = micro_batch_index(step, k, t.gradient_accumulation, self.world, self.rank)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("step %d rank %d micro-batch %d: %s", step, self.rank, index,
                          ", ".join(self.samples[i].key for i in self.stream.batch(index)))
            micro = self._loss(index, text_now) / t.gradient_accumulation
            self.accelerator.backward(micro)
            loss = micro.detach() if loss is None else loss + micro.detach()
        self._sync_text_grads()
        if t.max_grad_norm > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            self.accelerator.clip_grad_norm_(params, t.max_grad_norm)
        self.optimizer.step()
        self.compute_copies.refresh()  # the next forward computes with the updated weights
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.adapter.after_step()
        if self.ema is not None:
            self.ema.step()
        return loss

    def _loss(self, index: int, text_now: bool) -> torch.Tensor:
        """The weighted loss of micro-batch `index`."""
        seed = draw_seed(self.training.seed, index)
        gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
        torch.manual_seed(seed)  # adapter dropout
        samples_idx = self.stream.batch(index)
        samples = [self.samples[i] for i in samples_idx]
        flips = [self.spec.dataset.flip and rng.random() < 0.5 for _ in samples]
        keys = list(zip(samples_idx, flips, strict=True))
        latents = self.encoder.latents(keys, samples)
        control = self.encoder.latents(keys, samples, control=True) if self.data.pairs else None
        captions = [self._caption(s, rng) for s in samples]
        cond = self.encoder.text(captions, grad=text_now, controls=keys if self.data.pairs else None)
        noise = make_noise(latents, self.training, gen)
        timesteps = self.family.sample_timesteps(self.parts, latents, gen)
        weights = self.family.loss_weights(self.parts, timesteps, self.training.min_snr_gamma)
        weights = weights * torch.tensor([self.reg_weight if s.regularization else 1.0 for s in samples])
        timesteps = upload(timesteps, latents.device)
        sizes = [s.size_conditioning(flipped) for s, flipped in zip(samples, flips, strict=True)]
        masks = None
        if self.spec.dataset.masked_loss.enabled:
            hw, floor = tuple(latents.shape[-2:]), self.spec.dataset.masked_loss.floor
            masks = torch.stack([s.loss_mask(f, hw, floor) for s, f in zip(samples, flips, strict=True)])
        return self._weighted_mse(latents, noise, timesteps, cond, sizes, weights, masks, control)

    def _caption(self, sample: Sample, rng: random.Random) -> str:
        """The text of one draw: class images keep theirs (no trigger, tags or token: prior preservation)."""
        if sample.regularization:
            return sample.caption
        return self.adapter.prepare_caption(self.builder.build(sample.caption, rng))

    def _weighted_mse(self, latents, noise, timesteps, cond, sizes, weights, masks=None,
                     control=None) -> torch.Tensor:
        """Per-sample weighted MSE; `masks` (B, h, w): per-latent-pixel weights (dataset.maskedLoss)."""
        noisy, target = self.family.noisy_and_target(self.parts, latents, noise, timesteps)
        # Only edit families take a control (pairs are refused for the others when the spec is resolved).
        extra = {"control": control} if control is not None else {}
        with self.accelerator.autocast(), training_attention(self.device, self.gradient_checkpointing):
            pred = self.family.predict(self.train_parts, noisy, timesteps, cond, sizes, **extra)
        error = F.mse_loss(pred.float(), target.float(), reduction="none")
        if masks is not None:  # (B, h, w) over the channel (and frame) dimensions between
            error = error * upload(masks, error.device, error.dtype).view(
                len(masks), *[1] * (error.ndim - 3), *masks.shape[-2:])
        per_sample = error.mean(dim=list(range(1, pred.ndim)))
        return (per_sample * upload(weights, per_sample.device, per_sample.dtype)).mean()

    def _sync_text_grads(self) -> None:
        # Text weights are not wrapped in DDP (the families call the encoders directly): average by hand.
        if self.world == 1:
            return
        for group in self.adapter.param_groups():
            if group["name"] == self.family.denoiser_name:
                continue  # DDP already averaged these
            for p in group["params"]:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)

"""Save points: validation, checkpoints, previews and resume states at epoch ends and every N steps.

`SavePoints` is the part of `loop.LoraRecipe` that runs between steps when something is due.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from lora_operator.api import CheckpointEntry, spec_hash
from lora_operator.api.contract import checkpoint_key, checkpoint_name, step_checkpoint_name

from . import state as resume_state
from . import timings
from .data import Sample
from .ema import EMA_FOLDER, EMA_FORMAT_SUFFIX
from .encode import pixels
from .export import file_digest
from .previews import preview_controls, preview_prompts, preview_size, render_previews
from .speed import eager
from .step import draw_seed
from .textpark import text_encoders_held

log = logging.getLogger(__name__)

VALIDATION_TIMESTEPS = 4
"""Fixed timesteps per validation image: the validation loss compares across epochs."""


class SavePoints:
    """Validation, checkpoints, previews and resume states of `loop.LoraRecipe`."""

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean loss on the held-out images at fixed timesteps and noise; None without any."""
        if not self.data.validation:
            return None
        self.parts.denoiser.eval()
        losses = []
        for j, sample in enumerate(self.data.validation):
            caption = self._validation_caption(sample)
            latents = self._encode_one(sample.decoded(), VALIDATION_TIMESTEPS)
            control = self._encode_one(sample.decoded_control(), VALIDATION_TIMESTEPS) if self.data.pairs else None
            if self.encoder.released or (self.data.pairs and getattr(self.family, "text_reads_control", False)):
                cond = self.encoder.text([caption], grad=False, controls=[("validation", j)])
            else:
                cond = self.family.encode_prompts(self.parts, [caption])
            timesteps = self.family.fixed_timesteps(self.parts, VALIDATION_TIMESTEPS,
                                                    latent_shape=tuple(latents.shape))
            gen = torch.Generator().manual_seed(draw_seed(self.training.seed, -1 - j))
            noise = torch.randn(latents.shape, generator=gen).to(latents)
            cond = {k: v.expand(len(timesteps), *v.shape[1:]) for k, v in cond.items()}
            ones = torch.ones(len(timesteps))
            sizes = [sample.size_conditioning(False)] * len(timesteps)
            losses.append(self._weighted_mse(latents, noise, timesteps, cond, sizes, ones, control=control).item())
        self.parts.denoiser.train()
        return sum(losses) / len(losses)

    def _validation_caption(self, sample: Sample) -> str:
        return self.adapter.prepare_caption(", ".join(self.builder.tags(sample.caption)))


    def _encode_one(self, image, copies: int) -> torch.Tensor:
        """The latents of one image (unflipped), repeated `copies` times along the batch."""
        latents = self.family.encode_images(self.parts, pixels(image, False).unsqueeze(0).to(self.device)).float()
        return latents.expand(copies, *latents.shape[1:])

    def _end_epoch(self, epoch: int, step: int) -> None:
        last = epoch == self.plan.epochs
        every = self.spec.previews.every_epochs
        self._save_point(epoch, step, checkpoint=epoch % self.spec.checkpoints.every_epochs == 0 or last,
                         previews=bool(every) and (epoch % every == 0 or last), between=False, resume=not last)

    def _save_point(self, epoch: int, step: int, checkpoint: bool, previews: bool, between: bool,
                    resume: bool) -> None:
        """Validation, then the checkpoint and previews due, at an epoch end or (`between`) at a step
        between epoch ends (checkpoints / previews.everySteps: step-NNNNNNNN names)."""
        with timings.phase("validation"), eager():
            val = self.validation_loss()
        name = step_checkpoint_name(step) if between else checkpoint_name(epoch)
        stop = self.stopper.update(val, name)
        if self.main and (checkpoint or self.stopper.enabled):  # early stop: each evaluation keeps its checkpoint
            self.save_checkpoint(epoch, step, val, name)
        if stop:
            log.info("%s", stop)
            self.manifest.manifest.stopped_early = stop
            resume = False
        if self.main and previews:
            with timings.phase("previews"), eager(), self._ema_applied(), self._preview_text():
                entries = render_previews(self.family, self.parts, self.spec.previews,
                                          preview_prompts(self.spec.previews, self.data, self.builder), epoch,
                                          preview_size(self.spec.previews, self.data), self.outputs,
                                          preview_controls(self.data),
                                          conditioning=self._cached_prompt if self._previews_from_cache() else None,
                                          step=step if between else None)
            for entry in entries:
                self.manifest.add_preview(entry)
        if self.main:
            self.manifest.write()
            if resume:
                resume_state.save(self, step)
        self.progress.write()
        self.accelerator.wait_for_everyone()

    def _previews_from_cache(self) -> bool:
        """Previews take their prompts' conditioning from the text cache: the encoders were released and the
        family's pipeline takes embeddings (``prompt_kwargs``)."""
        return self.encoder.released and hasattr(self.family, "prompt_kwargs")

    def _preview_text(self) -> contextlib.AbstractContextManager:
        """Where previews encode their prompts in the pipeline, parked encoders stay on the device for the
        previews (not moved per call)."""
        return contextlib.nullcontext() if self._previews_from_cache() else text_encoders_held(self)

    def _cached_prompt(self, prompt: str) -> dict:
        """Pipeline arguments of a preview prompt from the cached conditioning (text encoders released)."""
        dtype = self.parts.denoiser.dtype
        as_input = lambda cond: {k: v.to(dtype) for k, v in cond.items()}  # noqa: E731
        return self.family.prompt_kwargs(as_input(self.encoder.text([prompt], grad=False)),
                                         as_input(self.encoder.text([""], grad=False)))

    def save_checkpoint(self, epoch: int, step: int, validation_loss: float | None,
                        name: str | None = None) -> list[CheckpointEntry]:
        """Export the adapter in every requested format and upload it under checkpoints/epoch-NNNN/ (or
        checkpoints/`name`/: a step checkpoint)."""
        self.progress.phase("saving")
        name = name or checkpoint_name(epoch)
        rel = checkpoint_key(name)
        metadata = self._metadata(epoch, step)
        folder = self.outputs.local(rel + "/x").parent
        with timings.phase("export"):
            written = self.adapter.export(folder, self.spec.checkpoints.formats, metadata)
        if self.ema is not None:  # the average beside the raw weights, in the same formats
            with timings.phase("export"), self._ema_applied():
                written += [(fmt + EMA_FORMAT_SUFFIX, path) for fmt, path in self.adapter.export(
                    folder / EMA_FOLDER, self.spec.checkpoints.formats, {**metadata, "ema": True})]
        entries = []
        for fmt, path in written:
            key = path.relative_to(self.outputs.workdir).as_posix()
            with timings.phase("upload"):
                self.outputs.publish(key)
            size, sha = file_digest(path)
            entry = CheckpointEntry(name=name, epoch=epoch, step=step, format=fmt, path=key, size_bytes=size,
                                    sha256=sha, validation_loss=validation_loss)
            self.manifest.add_checkpoint(entry)
            entries.append(entry)
        self.progress.phase("training")
        return entries

    @contextlib.contextmanager
    def _ema_applied(self):
        """The EMA weights in the adapter for a block (training.ema), else nothing changes."""
        if self.ema is None:
            yield
            return
        try:
            with self.ema.applied():
                self.compute_copies.refresh()  # the block's forward passes compute with the average
                yield
        finally:
            self.compute_copies.refresh()  # and the next training step with the trained weights

    def _metadata(self, epoch: int, step: int) -> dict:
        s, t = self.spec, self.training
        height, width = self.samples[0].target_size
        return {
            "base_model_family": str(s.base_model.family), "sd_model_name": s.base_model.uri,
            "epoch": epoch, "steps": step, "max_train_steps": self.plan.total_steps, "seed": t.seed,
            "num_train_images": len(self.data.train), "resolution": f"{width}x{height}",
            "learning_rate": t.unet_learning_rate, "text_encoder_lr": t.text_encoder_learning_rate,
            "unet_lr": t.unet_learning_rate, "lr_scheduler": str(t.lr_scheduler.type),
            "optimizer": str(t.optimizer.type), "noise_offset": t.noise_offset, "min_snr_gamma": t.min_snr_gamma,
            "mixed_precision": self.mixed_precision, "batch_size_per_device": t.batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation, "caption_dropout_rate": t.caption_dropout,
            "training_comment": f"lora-operator spec {spec_hash(s)[:12]}",
        } | ({"output_name": self.outputs.job_name} if self.outputs.job_name else {})

"""The training recipe: one class, read top to bottom (setup / train / save_checkpoint / cleanup).

Every model family and adapter type runs through this one loop; what differs sits
behind `families.Family` and `adapters.Adapter`. Randomness of micro-batch *n*
(timesteps, noise, flips, caption shuffles, LoRA dropout) is drawn from generators
seeded with (seed, n), so a resumed run continues exactly where the interrupted one
would have gone, and on CPU the same seed and data give byte-identical adapters.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from lora_operator.api import CheckpointEntry, JobSpec, Manifest, spec_hash
from lora_operator.api.contract import ENV_NODE_NAME, checkpoint_key, checkpoint_name, step_checkpoint_name
from lora_operator.storage import ObjectStore

from . import model_cache
from . import state as resume_state
from .adapters import make_adapter
from .data import CaptionBuilder, PreparedDataset, Sample, load_captioner, prepare_dataset
from .data.autocaption import CachedCaptioner, caption_fingerprint
from .earlystop import EarlyStopper
from .ema import EMA_FOLDER, EMA_FORMAT_SUFFIX, make_ema
from .encode import Encoder, pixels
from .errors import ConfigError, NanLossError
from .export import file_digest
from .families import get_family
from .families.base import refuse_distilled
from .memory import base_quantization
from .noise import make_noise
from .optim import build_optimizer, build_scheduler
from .outputs import Outputs
from .precision import checkpointing_wanted, resolve_precision
from .previews import check_previews, preview_controls, preview_prompts, preview_size, render_previews
from .progress import ManifestWriter, ProgressReporter
from .quantize import quantization_config, quantized_denoiser
from .schedule import BatchStream, Plan, count_steps
from .singlefile import SingleFileModel
from .speed import (
    channels_last,
    compile_denoiser,
    compile_mode,
    compile_scope,
    compile_wanted,
    eager,
    stable_attention,
    training_attention,
    upload,
)
from .stop import Stopped, on_sigterm
from .textpark import park_text_encoders, text_encoders_held

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.json"
CAPTION_CACHE_KEY = "caption-cache/"
"""The auto-caption cache inside the job's own prefix when no namespace cache is given."""
"""Under the job prefix: the caption each image trained with (auto captions are visible here)."""
COLLECTIVE_TIMEOUT = timedelta(hours=1)
"""How long workers wait for each other in a collective (rank 0 alone saves and renders)."""
VALIDATION_TIMESTEPS = 4
"""Fixed timesteps per validation image: the validation loss compares across epochs."""
LOSS_READ_EVERY = 10
"""Steps between reads of the loss to the host (progress line, NaN check): no sync in between."""


def micro_batch_index(step: int, k: int, accumulation: int, world: int, rank: int) -> int:
    """The micro-batch (0-based, over the run) of accumulation step `k` of optimizer step `step` on `rank`.

    Data parallel: the `world` workers take consecutive micro-batches, so together they walk
    through each data pass once, and step `step` has consumed ``step x accumulation x world``.
    """
    return ((step - 1) * accumulation + k) * world + rank


def draw_seed(seed: int, index: int) -> int:
    """The seed of micro-batch `index`: independent streams per batch, stable across resumes."""
    return (seed * 1_000_003 + index * 7_919 + 17) % (2**63 - 1)


@dataclass
class RunInputs:
    """Local folders a run reads.

    Attributes:
        model_dir: The base model (a diffusers folder or a single-file checkpoint).
        dataset_root: The training images.
        regularization_root: The regularization images, when the spec has them.
    """

    model_dir: Path | SingleFileModel
    dataset_root: Path
    regularization_root: Path | None = None
    captioner_dir: Path | None = None
    """The auto-caption tagger model, when dataset.autoCaption is set."""
    caption_cache: ObjectStore | None = None
    """Where auto captions are cached for the namespace (contract.caption_cache_prefix); None: in the
    job's own output prefix (a retry still reads them back)."""


class LoraRecipe:
    """Trains one adapter as a job spec describes.

    Args:
        spec: The resolved job spec.
        inputs: Local folders of the model and the data.
        outputs: The job's output prefix.
        attempt: The attempt number (1-based), for progress.json.
        resume: Continue from the state under ``state/`` when there is one.
        progress_interval: Seconds between progress.json writes.
    """

    def __init__(self, spec: JobSpec, inputs: RunInputs, outputs: Outputs, *, attempt: int = 1,
                 resume: bool = False, progress_interval: float = 5.0):
        self.spec = spec
        self.training = spec.training
        self.inputs = inputs
        self.outputs = outputs
        self.attempt = attempt
        self.resume = resume
        self.progress_interval = progress_interval
        self.family = get_family(spec.base_model.family)
        self.adapter = make_adapter(spec.type)
        self.start_step = 0
        self.started_at = time.monotonic()
        self.last_loss: float | None = None
        """The last training loss read back from the device (every LOSS_READ_EVERY steps)."""

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Prepare data, load the model, attach the adapter, build optimizer and schedule."""
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs, set_seed

        t, spec = self.training, self.spec
        check_previews(self.family, spec.previews)
        set_seed(t.seed)
        captioner = None
        auto = spec.dataset.auto_caption
        if auto is not None and self.inputs.captioner_dir is not None:
            shared = self.inputs.caption_cache
            captioner = CachedCaptioner(
                lambda: load_captioner(self.inputs.captioner_dir, threshold=auto.threshold),
                shared or self.outputs.store, caption_fingerprint(auto.model, auto.threshold),
                prefix="" if shared else CAPTION_CACHE_KEY)
        self.data: PreparedDataset = prepare_dataset(
            spec.dataset, self.inputs.dataset_root, spec.base_model.family, seed=t.seed,
            regularization_root=self.inputs.regularization_root, captioner=captioner,
        )
        self.samples: list[Sample] = self.data.train + self.data.regularization

        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        self.mixed_precision, weight_dtype = resolve_precision(t.mixed_precision, device_type)
        # With several GPUs, rank 0 writes checkpoints, previews and state while the others wait in
        # a collective: give it longer than the default 10 minutes.
        self.accelerator = Accelerator(mixed_precision=self.mixed_precision,
                                       kwargs_handlers=[InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT)])
        self.device = self.accelerator.device
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.main = self.accelerator.is_main_process
        # Data parallel: every optimizer step takes `world` micro-batches per accumulation step, so
        # the same epochs need 1/world of the steps (schedule.count_steps).
        steps, self.steps_text = count_steps(t, spec.base_model.family, self.data.train, self.world,
                                             self.data.regularization)
        self.plan = Plan.make(steps, t.epochs)
        self.text_steps = math.ceil(t.text_encoder_ratio * self.plan.total_steps)
        if self.main:
            log.info("plan: %s; %d epochs of %d steps", self.steps_text, self.plan.epochs, self.plan.steps_per_epoch)

        publish = self.outputs.publish_bytes if self.main else (lambda key, data: None)
        self.progress = ProgressReporter(publish, self.attempt, self.plan.total_steps, self.plan.epochs,
                                         plan=self.steps_text, interval=self.progress_interval,
                                         job_uid=self.outputs.job_uid,
                                         stream=None if self.main else open(os.devnull, "w"))  # noqa: SIM115
        self.progress.phase("loading")
        publish(CAPTIONS_FILE, self.data.captions_json())
        self.manifest = ManifestWriter(publish, Manifest(
            job_uid=self.outputs.job_uid, spec_hash=spec_hash(spec), images=len(self.data.train),
            validation_images=len(self.data.held_out),
            total_steps=self.plan.total_steps, skipped=list(self.data.skipped),
        ))

        refuse_distilled(spec.base_model.family, self.inputs.model_dir)
        megapixels = max(h * w for h, w in (s.target_size for s in self.samples)) / 1e6
        self.base_quantization = base_quantization(t.base_quantization, self.family, self.inputs.model_dir,
                                                   self.device, images=t.batch_size, megapixels=megapixels,
                                                   dora=spec.network.dora)
        quantization = quantization_config(self.base_quantization, self.device.type, weight_dtype)
        with quantized_denoiser(quantization):
            self.parts = self.family.load(self.inputs.model_dir, weight_dtype)
        self.family.configure(self.parts, t)
        for module in self.parts.frozen_modules():
            module.requires_grad_(False)
            module.to(self.device)
        torch.manual_seed(t.seed)  # the adapter's initial weights
        self.adapter.attach(self.family, self.parts, spec)
        self._gradient_checkpointing()
        self._speed_ups()
        self.builder = CaptionBuilder(spec.dataset, t)

        self.optimizer = build_optimizer(self.adapter.param_groups(), t, self.device)
        self.ema = make_ema(self.adapter.param_groups(), t.ema)
        self.lr_scheduler = build_scheduler(self.optimizer, t, self.plan.total_steps)
        denoiser = self.parts.denoiser
        if any(p.requires_grad for p in denoiser.parameters()):
            denoiser = self.accelerator.prepare(denoiser)  # DDP refuses a module with nothing to train
        self.optimizer = self.accelerator.prepare(self.optimizer)
        self.train_parts = replace(self.parts, denoiser=denoiser)
        self.encoder = Encoder(self.family, self.train_parts, self.device, cache_latents=t.cache_latents,
                               cache_text=self.builder.deterministic)
        self.encoder.control_image = self._control_image
        self.stream = BatchStream(self.samples, t.batch_size, t.seed)
        self.reg_weight = spec.dataset.regularization.weight if spec.dataset.regularization else 1.0
        if self.resume:
            self.start_step = resume_state.restore(self)
        # This attempt's node and fetches (over a restored manifest's), written at once, after the
        # restore read the saved one: the operator learns which node caches the model before the first epoch.
        self.manifest.manifest.node_name = os.environ.get(ENV_NODE_NAME)
        self.manifest.manifest.models = model_cache.reported()
        self.manifest.write()
        if t.cache_latents:
            self.progress.phase("caching")
            self._precache()
        self.text_parked = park_text_encoders(self)

    def _gradient_checkpointing(self) -> None:
        megapixels = max(h * w for h, w in (s.target_size for s in self.samples)) / 1e6
        self.gradient_checkpointing = checkpointing_wanted(
            self.training.gradient_checkpointing, self.family, self.device,
            images=self.training.batch_size, megapixels=megapixels)
        if self.gradient_checkpointing:
            self.parts.denoiser.enable_gradient_checkpointing()
            if self.adapter.trains_text:
                for encoder in self.parts.text_encoders[: self.family.trainable_text_encoders]:
                    encoder.gradient_checkpointing_enable()

    def _speed_ups(self) -> None:
        if self.device.type == "cuda":
            stable_attention()
            channels_last(self.parts.denoiser)
        self.compiled = compile_wanted(self.training.compile, self.device)
        self.compile_mode = compile_mode(self.family.compile_mode, self.device, self.gradient_checkpointing)
        if self.compiled:
            compile_denoiser(self.parts.denoiser, self.compile_mode, compile_scope())

    def _precache(self) -> None:
        for start in range(0, len(self.samples), self.training.batch_size):
            chunk = list(range(start, min(start + self.training.batch_size, len(self.samples))))
            same = [i for i in chunk if self.samples[i].target_size == self.samples[chunk[0]].target_size]
            self.encoder.latents([(i, False) for i in same], [self.samples[i] for i in same])
            if self.data.pairs:
                self.encoder.latents([(i, False) for i in same], [self.samples[i] for i in same], control=True)

    def _control_image(self, key: tuple) -> Image.Image:
        """The control image a text cache key names: (sample index, flipped) of a training draw, or
        ("validation", j) of held-out pair j (unflipped, as validation encodes its latents)."""
        if key[0] == "validation":
            return self.data.validation[key[1]].decoded_control()
        index, flipped = key
        image = self.samples[index].decoded_control()
        return ImageOps.mirror(image) if flipped else image

    def _validation_caption(self, sample: Sample) -> str:
        return self.adapter.prepare_caption(", ".join(self.builder.tags(sample.caption)))

    # ------------------------------------------------------------------ train
    def train(self) -> Manifest:
        """Run the optimizer steps; checkpoints and previews at epoch ends, resume state also every N steps.

        Returns:
            The final manifest.

        Raises:
            NanLossError: The loss became NaN or infinite.
            Stopped: SIGTERM arrived; the resume state after the step in flight was saved first.
        """
        with on_sigterm() as self.stop:
            self.stop.deferring = True
            return self._train()

    def _train(self) -> Manifest:
        self.progress.report.step = self.start_step
        self.progress.report.epoch = self.plan.epoch_of(self.start_step) if self.start_step else 0
        self.progress.phase("training")
        self.stopper = EarlyStopper(self.training.early_stop, bool(self.data.validation))
        pending: list[tuple[int, torch.Tensor]] = []
        for step in range(self.start_step + 1, self.plan.total_steps + 1):
            pending.append((step, self.train_step(step)))
            epoch = self.plan.epoch_of(step)
            epoch_end = step == self.plan.epoch_end(epoch)
            saves = (False, False) if epoch_end else self._step_saves(step)
            state_due = not epoch_end and self._state_due(step)
            if epoch_end or state_due or any(saves) or step % LOSS_READ_EVERY == 0:
                self._read_losses(pending)
                pending = []
            self.progress.step(step, epoch, self.last_loss)
            if epoch_end:
                self._end_epoch(epoch, step)
            elif any(saves):
                self._save_point(epoch, step, *saves, between=True, resume=True)
            elif state_due:
                resume_state.save(self, step)
            if self.manifest.manifest.stopped_early:
                break
            if self.stop.requested and step < self.plan.total_steps:
                self._stop(step, pending, saved=epoch_end or state_due or any(saves))
        self.progress.phase("done")
        self.manifest.write(finished=True)
        return self.manifest.manifest

    def _stop(self, step: int, pending: list[tuple[int, torch.Tensor]], *, saved: bool) -> None:
        """SIGTERM: save the resume state after `step` (unless this step just saved it) and stop."""
        if pending:
            self._read_losses(pending)  # no NaN goes into a resume state
        if self.main and not saved:
            resume_state.save(self, step)
        self.progress.write()
        raise Stopped(step)

    def _step_saves(self, step: int) -> tuple[bool, bool]:
        """(checkpoint, previews) due at a step between epoch ends (checkpoints / previews.everySteps)."""
        if step >= self.plan.total_steps:
            return False, False
        every = (self.spec.checkpoints.every_steps, self.spec.previews.every_steps)
        return bool(every[0] and step % every[0] == 0), bool(every[1] and step % every[1] == 0)

    def _state_due(self, step: int) -> bool:
        """A mid-epoch resume state is due (checkpoints.stateEverySteps; epoch ends save their own)."""
        every = self.spec.checkpoints.state_every_steps
        return self.main and every > 0 and step % every == 0 and step < self.plan.total_steps

    def _read_losses(self, pending: list[tuple[int, torch.Tensor]]) -> None:
        """Reads the losses of the steps since the last read in one device sync; stops on NaN/inf.

        A step's loss stays on the device until here, so steps run without host syncs (progress
        counts every step; its loss is the last one read); a NaN is caught at the latest
        LOSS_READ_EVERY steps later, and always before a checkpoint or a resume state is written.
        """
        values = torch.stack([loss.detach().float().cpu() for _, loss in pending]).tolist()
        for (step, _), value in zip(pending, values, strict=True):
            if not math.isfinite(value):
                raise NanLossError(
                    f"training: the loss became {value} at step {step} "
                    f"(lower training.unetLearningRate, now {self.training.unet_learning_rate})"
                )
            self.last_loss = value

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
        with eager():
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
            with eager(), self._ema_applied(), self._preview_text():
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

    # ------------------------------------------------------------------ save
    def save_checkpoint(self, epoch: int, step: int, validation_loss: float | None,
                        name: str | None = None) -> list[CheckpointEntry]:
        """Export the adapter in every requested format and upload it under checkpoints/epoch-NNNN/ (or
        checkpoints/`name`/: a step checkpoint)."""
        self.progress.phase("saving")
        name = name or checkpoint_name(epoch)
        rel = checkpoint_key(name)
        metadata = self._metadata(epoch, step)
        folder = self.outputs.local(rel + "/x").parent
        written = self.adapter.export(folder, self.spec.checkpoints.formats, metadata)
        if self.ema is not None:  # the average beside the raw weights, in the same formats
            with self._ema_applied():
                written += [(fmt + EMA_FORMAT_SUFFIX, path) for fmt, path in self.adapter.export(
                    folder / EMA_FOLDER, self.spec.checkpoints.formats, {**metadata, "ema": True})]
        entries = []
        for fmt, path in written:
            key = path.relative_to(self.outputs.workdir).as_posix()
            self.outputs.publish(key)
            size, sha = file_digest(path)
            entry = CheckpointEntry(name=name, epoch=epoch, step=step, format=fmt, path=key, size_bytes=size,
                                    sha256=sha, validation_loss=validation_loss)
            self.manifest.add_checkpoint(entry)
            entries.append(entry)
        self.progress.phase("training")
        return entries

    def _ema_applied(self):
        """The EMA weights in the adapter for a block (training.ema), else nothing changes."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

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

    def cleanup(self) -> None:
        """Release the models and end the distributed group."""
        self.accelerator.end_training()
        self.parts = self.train_parts = None


def run_recipe(spec: JobSpec, inputs: RunInputs, outputs: Outputs, **kwargs) -> Manifest:
    """setup + train + cleanup; what the CLI calls."""
    if spec.type is None:
        raise ConfigError("type: missing (resolve the spec first)")
    recipe = LoraRecipe(spec, inputs, outputs, **kwargs)
    try:
        recipe.setup()
        return recipe.train()
    finally:
        if hasattr(recipe, "accelerator"):
            recipe.cleanup()

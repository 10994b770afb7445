"""Setting up a run: data, model, adapter, optimizer and schedule, before the first step.

`RunSetup` is the first part of `loop.LoraRecipe` (its `setup`); it reads the spec and leaves on the
recipe everything the steps and save points use.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch
from PIL import Image, ImageOps

from lora_operator.api import Manifest, spec_hash
from lora_operator.api.contract import ENV_NODE_NAME
from lora_operator.storage import ObjectStore

from . import model_cache, timings
from . import state as resume_state
from .compute_copies import adapter_cast, install_compute_copies
from .data import CaptionBuilder, PreparedDataset, Sample, load_captioner, prepare_dataset
from .data.autocaption import CachedCaptioner, caption_fingerprint
from .ema import make_ema
from .encode import Encoder
from .families.base import refuse_distilled
from .memory import base_quantization
from .offload import offload_denoiser, offload_wanted, place_trainable
from .optim import build_optimizer, build_scheduler
from .precision import checkpointing_wanted, resolve_precision
from .previews import check_previews
from .progress import ManifestWriter, ProgressReporter
from .quantize import quantization_config, quantized_denoiser
from .schedule import BatchStream, Plan, count_steps
from .singlefile import SingleFileModel
from .speed import (
    channels_last,
    compile_blocks,
    compile_denoiser,
    compile_mode,
    compile_scope,
    compile_wanted,
    stable_attention,
)
from .textpark import park_text_encoders

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.json"
"""Under the job prefix: the caption each image trained with (auto captions are visible here)."""
CAPTION_CACHE_KEY = "caption-cache/"
"""The auto-caption cache inside the job's own prefix when no namespace cache is given."""
COLLECTIVE_TIMEOUT = timedelta(hours=1)
"""How long workers wait for each other in a collective (rank 0 alone saves and renders)."""


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


class RunSetup:
    """The setup of `loop.LoraRecipe`: everything before the first optimizer step."""

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
        ), written=self.progress.manifest_written)

        refuse_distilled(spec.base_model.family, self.inputs.model_dir)
        megapixels = max(h * w for h, w in (s.target_size for s in self.samples)) / 1e6
        self.base_quantization = base_quantization(t.base_quantization, self.family, self.inputs.model_dir,
                                                   self.device, images=t.batch_size, megapixels=megapixels,
                                                   dora=spec.network.dora, offload=t.offload == "blocks")
        quantization = quantization_config(self.base_quantization, self.device.type, weight_dtype)
        with quantized_denoiser(quantization):
            self.parts = self.family.load(self.inputs.model_dir, weight_dtype)
        self.family.configure(self.parts, t, spec.previews)
        self.offload = offload_wanted(t.offload, self.family, self.inputs.model_dir, self.device,
                                      quantization=self.base_quantization, world=self.world, images=t.batch_size,
                                      megapixels=megapixels, dora=spec.network.dora)
        for module in self.parts.frozen_modules():
            module.requires_grad_(False)
            if self.offload and module is self.parts.denoiser:
                offload_denoiser(module, self.device)  # before the adapter: only the frozen layers get hooks
            else:
                module.to(self.device)
        torch.manual_seed(t.seed)  # the adapter's initial weights
        self.adapter.attach(self.family, self.parts, spec)
        if self.offload:
            place_trainable(self.parts.denoiser, self.device)
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
            self.compute_copies.refresh()
        # This attempt's node and fetches (over a restored manifest's), written at once, after the
        # restore read the saved one: the operator learns which node caches the model before the first epoch.
        self.manifest.manifest.node_name = os.environ.get(ENV_NODE_NAME)
        self.manifest.manifest.models = model_cache.reported()
        self.manifest.write()
        with timings.phase("caching"):
            if t.cache_latents:
                self.progress.phase("caching")
                self._precache()
            self.text_parked = park_text_encoders(self)

    def _gradient_checkpointing(self) -> None:
        megapixels = max(h * w for h, w in (s.target_size for s in self.samples)) / 1e6
        # offload needs it (offload.py); the spec refuses offload blocks with gradientCheckpointing off
        self.gradient_checkpointing = self.offload or checkpointing_wanted(
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
            if not self.offload:  # its layers' pinned host copies keep their own layout
                channels_last(self.parts.denoiser)
        # before compiling: the compiled blocks read the copies
        self.adapter_cast = adapter_cast(self.device, self.mixed_precision)
        self.compute_copies = install_compute_copies(self.parts.denoiser, self.adapter_cast, self.mixed_precision)
        # offloading hooks break compiled graphs: auto leaves it off (the spec refuses compile on with offload)
        self.compiled = compile_wanted(self.training.compile, self.device) and not self.offload
        self.compile_mode = compile_mode(self.family, self.device, self.gradient_checkpointing,
                                         self.training.batch_size)
        if self.compiled:
            compile_denoiser(self.parts.denoiser, self.compile_mode, compile_scope(),
                             compile_blocks(self.family.compile_blocks))

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


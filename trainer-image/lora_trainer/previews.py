"""Preview images at epoch ends: every prompt x imagesPerPrompt with the adapter, plus a grid.

Images of prompt P, image I go to ``previews/epoch-NNNN/pP-iI.png``; the grid (one row
per prompt) to ``previews/epoch-NNNN/grid.png``. The seed is the same every epoch so
epochs compare image by image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from lora_operator.api import PreviewEntry, Previews, Sampler
from lora_operator.api.contract import previews_key

from .data import CaptionBuilder, PreparedDataset
from .errors import ConfigError
from .families import Components, Family
from .families.base import preview_guidance
from .outputs import Outputs

FLOW_SAMPLERS = {Sampler.FLOW_EULER}
MAX_CONTROLS = 32
"""Control images decoded for previews at most (one per prompt: previews.prompts has at most 32)."""


def _scheduler_class(sampler: Sampler) -> Any:
    import diffusers

    names = {
        Sampler.EULER: "EulerDiscreteScheduler",
        Sampler.EULER_A: "EulerAncestralDiscreteScheduler",
        Sampler.DDIM: "DDIMScheduler",
        Sampler.DPMPP_2M: "DPMSolverMultistepScheduler",
        Sampler.FLOW_EULER: "FlowMatchEulerDiscreteScheduler",
    }
    return getattr(diffusers, names[sampler])


def check_previews(family: Family, previews: Previews) -> None:
    """Refuse preview settings the family's pipeline would ignore: a flow sampler for a DDPM family (a DDPM
    sampler on Flux means its default, flow_euler), trueGuidance where previews.guidance already is (or
    there is no) classifier-free guidance, a negative prompt where no classifier-free guidance takes it."""
    flow_family = family.default_sampler in FLOW_SAMPLERS
    if previews.sampler in FLOW_SAMPLERS and not flow_family:
        raise ConfigError(f"previews.sampler: {previews.sampler} is for flow-matching models (flux), "
                          f"not {family.family}; use euler, euler_a, ddim or dpmpp_2m")
    if previews.true_guidance != 1 and family.preview_cfg != "true_guidance":
        raise ConfigError(f"previews.trueGuidance: {family.family} has no classifier-free guidance apart from "
                          "previews.guidance (trueGuidance is for families whose guidance is distilled: flux, "
                          "flux-kontext); set previews.guidance and leave trueGuidance out")
    if previews.negative_prompt:
        cfg = family.preview_cfg
        if not family.preview_negative or cfg is None:
            raise ConfigError(f"previews.negativePrompt: {family.family}'s preview pipeline takes no negative "
                              "prompt; leave it out")
        scale = preview_guidance(family, previews) if cfg == "guidance" else getattr(previews, cfg)
        if scale <= 1:
            field = Previews.model_fields[cfg].alias
            raise ConfigError(f"previews.negativePrompt: {family.family} uses it only for classifier-free "
                              f"guidance, which previews.{field} {scale:g} turns off; set "
                              f"previews.{field} above 1 or leave negativePrompt out")


def preview_scheduler(family: Family, parts: Components, sampler: Sampler) -> Any:
    """The inference scheduler of `sampler`, configured from the model's training scheduler."""
    if (sampler in FLOW_SAMPLERS) != (family.default_sampler in FLOW_SAMPLERS):
        sampler = family.default_sampler
    extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if sampler is Sampler.DPMPP_2M else {}
    return _scheduler_class(sampler).from_config(parts.noise_scheduler.config, **extra)


def grid(images: list[list[Image.Image]]) -> Image.Image:
    """One row per prompt, one column per image."""
    w, h = images[0][0].size
    cols = max(len(row) for row in images)
    sheet = Image.new("RGB", (w * cols, h * len(images)), "white")
    for r, row in enumerate(images):
        for c, image in enumerate(row):
            sheet.paste(image, (c * w, r * h))
    return sheet


@torch.no_grad()
def generate(family: Family, parts: Components, previews: Previews, prompts: list[str],
             size: tuple[int, int], controls: list[Image.Image] | None = None,
             conditioning: Callable[[str], dict[str, Any]] | None = None) -> list[list[Image.Image]]:
    """Images per prompt with the current (adapted) components, in eval mode.

    Args:
        controls: An edit family's images to edit, prompt i editing ``controls[i % len(controls)]``.
        conditioning: Pipeline arguments (prompt_embeds, ...) of a prompt, for runs whose text encoders were
            released after caching; None: the pipeline encodes the prompt itself.
    """
    modules = [parts.denoiser, *parts.text_encoders]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    pipe = family.pipeline(parts)
    pipe.scheduler = preview_scheduler(family, parts, previews.sampler)
    pipe.set_progress_bar_config(disable=True)
    out = []
    try:
        for p, prompt in enumerate(prompts):
            n = previews.images_per_prompt
            generators = [torch.Generator(device="cpu").manual_seed(previews.seed + i) for i in range(n)]
            edit = family.edit_inputs(controls[p % len(controls)], size) if controls else {}
            text = {"prompt": prompt} if conditioning is None else conditioning(prompt)
            result = pipe(**text, num_images_per_prompt=n, num_inference_steps=previews.steps,
                          height=size[0], width=size[1], generator=generators,
                          **family.pipeline_kwargs(previews), **edit)
            out.append(list(result.images))
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
    return out


def render_previews(family: Family, parts: Components, previews: Previews, prompts: list[str], epoch: int,
                    size: tuple[int, int], outputs: Outputs,
                    controls: list[Image.Image] | None = None,
                    conditioning: Callable[[str], dict[str, Any]] | None = None,
                    step: int | None = None) -> list[PreviewEntry]:
    """Generate, write and upload the previews of `epoch` (of `step` when taken between epoch ends);
    one entry per prompt (see `generate`)."""
    folder = previews_key(epoch, step)
    images = generate(family, parts, previews, prompts, size, controls, conditioning)
    entries = []
    grid_key = f"{folder}/grid.png"
    for p, (prompt, row) in enumerate(zip(prompts, images, strict=True)):
        paths = []
        for i, image in enumerate(row):
            key = f"{folder}/p{p}-i{i}.png"
            image.save(outputs.local(key))
            paths.append(outputs.publish(key))
        entries.append(PreviewEntry(epoch=epoch, step=step, prompt=prompt, paths=paths, grid=grid_key))
    grid(images).save(outputs.local(grid_key))
    outputs.publish(grid_key)
    return entries


def preview_prompts(previews: Previews, data: PreparedDataset, builder: CaptionBuilder) -> list[str]:
    """previews.prompts, else the tags of the first validation (or training) image's caption (with pairs:
    the instruction of the pair whose control image the first preview edits)."""
    if previews.prompts:
        return list(previews.prompts)
    source = data.validation or data.train
    return [", ".join(builder.tags(source[0].caption))]


def preview_controls(data: PreparedDataset) -> list[Image.Image] | None:
    """With edit pairs, the control images the previews edit: the held-out pairs' (the validation pairs',
    the training pairs' when there are none), cut as they train; None without pairs."""
    if not data.pairs:
        return None
    source = data.held_out or data.validation or data.train
    return [sample.decoded_control() for sample in source[:MAX_CONTROLS]]


def preview_size(previews: Previews, data: PreparedDataset) -> tuple[int, int]:
    """(height, width) of the previews: previews.size (``WxH``), else the first training image's."""
    if previews.size:
        width, height = (int(v) for v in previews.size.split("x"))
        return height, width
    return data.train[0].target_size

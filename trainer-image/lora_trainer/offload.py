"""training.offload: the frozen denoiser's weights in host memory, each layer on the GPU only while it runs.

diffusers' group offloading (`diffusers.hooks.apply_group_offloading`) hooks a module's layers so that a
layer's weights come onto the onload device just before its forward and leave after it; with a CUDA stream
the next layer's copy overlaps the current layer's compute (prefetching in the order the first forward ran).

Why leaf level, applied before the adapter attaches, rather than block level:

- The adapter's weights must stay on the GPU, beside their optimizer state. A block-level group moves every
  parameter of its blocks, LoRA weights included; with a stream it restores them on every offload from the
  pinned host copy it took when it was applied, so a step's update would be undone (or, applied before the
  adapter attached, the new weights have no copy at all).
- At leaf level each of the model's own layers (Linear, Conv, norms) is a group of its own. peft then wraps
  those layers (``base_layer`` keeps the hook) and adds ``lora_A``/``lora_B`` layers that have no hook:
  `place_trainable` puts them on the GPU, and only frozen weights, whose pinned copies never go stale, move.

Why gradient checkpointing is required: autograd keeps a view of each weight a layer used until the backward
pass, so without checkpointing every layer's device copy stays alive until then (no saving). With the
denoiser's blocks checkpointed, a block's weights come back for its recompute and are freed after its backward.

DoRA is refused (the spec, `lora_operator.api.training.offload_problems`): peft's DoRA reads the base weight
outside the base layer's forward, where it is in host memory. nf4 is refused too: bitsandbytes' 4-bit weights
keep their quantization state beside the tensor, which the offloading's pinned copies do not carry.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .families import Family
from .memory import choose_offload, folder_weights, gpu_memory_gib
from .singlefile import SingleFileModel

log = logging.getLogger(__name__)

OFFLOAD_DEVICE = torch.device("cpu")
"""Where the frozen weights rest between their layers' forwards."""


def offload_wanted(setting: str, family: Family, folder: Path | SingleFileModel | None, device: torch.device, *,
                   quantization: str, world: int, images: int, megapixels: float, dora: bool = False) -> bool:
    """training.offload for this job: blocks or none as set; auto is blocks when the estimated peak with the
    chosen `quantization` and gradient checkpointing does not fit the GPU the pod holds (`memory.choose_offload`
    with `memory.gpu_memory_gib`), none when that memory is unknown (CPU without the node's figure), for a
    single-file base, with nf4 or DoRA, or with several GPUs. The estimate counts the text
    encoders as resident (they may not be parked), as baseQuantization auto does.

    Raises:
        ConfigError: blocks with several GPUs (DDP needs every parameter on its GPU to start).
    """
    if setting == "blocks":
        if world > 1:
            raise ConfigError(f"training.offload blocks trains on one GPU only (this job has {world}): data "
                              "parallel training needs every weight on its GPU; set offload none or use one GPU")
        return True
    if setting != "auto" or world > 1 or quantization == "nf4" or dora:
        return False
    memory = gpu_memory_gib(device)
    if memory is None:
        return False
    weights = folder_weights(folder, family.denoiser_name) if isinstance(folder, Path) else None
    return choose_offload(weights, family.activation_gib_per_megapixel, memory_gib=memory, quantization=quantization,
                          images=images, megapixels=megapixels, text_parked=False)


def offload_kwargs(onload: torch.device) -> dict[str, Any]:
    """The arguments of `apply_group_offloading` for training on `onload`: leaf level (see the module's doc);
    a CUDA stream (prefetch of the next layer, non-blocking copies from pinned memory) only on CUDA, where
    streams exist; on CPU (the tests) onload and offload are the same device and nothing moves."""
    cuda = onload.type == "cuda"
    return {"onload_device": onload, "offload_device": OFFLOAD_DEVICE, "offload_type": "leaf_level",
            "use_stream": cuda, "non_blocking": cuda}


def offload_denoiser(denoiser: torch.nn.Module, onload: torch.device) -> None:
    """Hooks every layer of the loaded `denoiser` (before the adapter attaches) to rest on the CPU."""
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(denoiser, **offload_kwargs(onload))
    log.info("offload: the denoiser's frozen layers rest in host memory (stream: %s)", onload.type == "cuda")


def place_trainable(module: torch.nn.Module, device: torch.device) -> None:
    """Moves the trainable parameters of an offloaded `module` to `device`: peft created them on the device of
    their base layer's weight (the CPU, offloaded), and their layers have no offloading hook to move them.
    (``module.to`` is refused by diffusers on a group-offloaded model.)"""
    for param in module.parameters():
        if param.requires_grad and param.device != device:
            param.data = param.data.to(device)

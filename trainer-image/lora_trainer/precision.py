"""Mixed precision and gradient checkpointing: what the spec asks, adjusted to the hardware."""

from __future__ import annotations

import logging
import os

import torch

from lora_operator.api import MixedPrecision

from .families import Family
from .memory import MEMORY_HEADROOM, gpu_memory_gib

log = logging.getLogger(__name__)

CPU_BF16_ENV = "LORA_CPU_BF16"
"""Set to 1: training.mixedPrecision bf16 stays bf16 on CPU (torch runs bf16 there, slowly on most
CPUs). The trainer tests set it to run the bf16 paths of every family and adapter without a GPU."""
DTYPES = {MixedPrecision.NO: torch.float32, MixedPrecision.FP16: torch.float16, MixedPrecision.BF16: torch.bfloat16}


def resolve_precision(requested: MixedPrecision | str, device_type: str) -> tuple[str, torch.dtype]:
    """The accelerate mixed-precision mode and the dtype of the frozen weights.

    On CPU every mode falls back to ``no`` (float32): CPU autocast is slow and fp16 is
    unsupported there; bf16 stays bf16 when ``LORA_CPU_BF16=1`` (`CPU_BF16_ENV`). On a GPU
    without bf16 support, bf16 falls back to fp16.

    Args:
        requested: training.mixedPrecision.
        device_type: ``cuda`` or ``cpu``.

    Returns:
        (mode for ``Accelerator(mixed_precision=...)``, dtype of the frozen weights).
    """
    mode = MixedPrecision(requested)
    if device_type != "cuda":
        if mode is MixedPrecision.BF16 and os.environ.get(CPU_BF16_ENV) == "1":
            return mode.value, torch.bfloat16
        if mode is not MixedPrecision.NO:
            log.info("mixedPrecision %s falls back to no on CPU", mode)
        return MixedPrecision.NO.value, torch.float32
    if mode is MixedPrecision.BF16 and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16: mixedPrecision falls back to fp16")
        mode = MixedPrecision.FP16
    return mode.value, DTYPES[mode]


def checkpointing_wanted(setting: str, family: Family, device: torch.device, *, images: int, megapixels: float,
                         memory_gib: float | None = None, resident_gib: float | None = None) -> bool:
    """Whether to turn gradient checkpointing on.

    auto estimates the step's peak: the weights already on the GPU plus the denoiser's
    saved activations, `family.activation_gib_per_megapixel` per training megapixel
    (measured on an H100 without checkpointing, bench/RESULTS.md). Checkpointing costs
    about a third more compute, so it is turned on only when that estimate would not fit:
    Flux at 1024 px fits one image on an 80 GB GPU without it, not two.

    Args:
        setting: training.gradientCheckpointing: on, off or auto.
        family: The model family.
        device: The training device.
        images: Images per micro-batch.
        megapixels: The largest training image, in megapixels.
        memory_gib: The GPU memory; default: `memory.gpu_memory_gib` (the node's figure the operator
            passed, or torch's); auto is off when neither is known (CPU: memory is not the limit there).
        resident_gib: Memory already in use (the loaded models); default: asked from torch (0 off CUDA).
    """
    if setting in ("on", "off"):
        return setting == "on"
    if memory_gib is None:
        memory_gib = gpu_memory_gib(device)
    if memory_gib is None:
        return False
    if resident_gib is None:
        resident_gib = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    peak = resident_gib + images * megapixels * family.activation_gib_per_megapixel
    log.info("gradientCheckpointing auto: estimated peak %.1f GiB of %.1f GiB", peak, memory_gib)
    return peak > MEMORY_HEADROOM * memory_gib

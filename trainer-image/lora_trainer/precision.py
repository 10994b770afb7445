"""Mixed precision and gradient checkpointing: what the spec asks, adjusted to the hardware."""

from __future__ import annotations

import logging

import torch

from lora_operator.api import MixedPrecision

from .families import Family

log = logging.getLogger(__name__)

DTYPES = {MixedPrecision.NO: torch.float32, MixedPrecision.FP16: torch.float16, MixedPrecision.BF16: torch.bfloat16}


def resolve_precision(requested: MixedPrecision | str, device_type: str) -> tuple[str, torch.dtype]:
    """The accelerate mixed-precision mode and the dtype of the frozen weights.

    On CPU every mode falls back to ``no`` (float32): CPU autocast is slow and fp16 is
    unsupported there. On a GPU without bf16 support, bf16 falls back to fp16.

    Args:
        requested: training.mixedPrecision.
        device_type: ``cuda`` or ``cpu``.

    Returns:
        (mode for ``Accelerator(mixed_precision=...)``, dtype of the frozen weights).
    """
    mode = MixedPrecision(requested)
    if device_type != "cuda":
        if mode is not MixedPrecision.NO:
            log.info("mixedPrecision %s falls back to no on CPU", mode)
        return MixedPrecision.NO.value, torch.float32
    if mode is MixedPrecision.BF16 and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16: mixedPrecision falls back to fp16")
        mode = MixedPrecision.FP16
    return mode.value, DTYPES[mode]


def checkpointing_wanted(setting: str, family: Family, device: torch.device, memory_gib: float | None = None) -> bool:
    """Whether to turn gradient checkpointing on.

    Args:
        setting: training.gradientCheckpointing: on, off or auto.
        family: The model family (auto compares with its `checkpointing_below_gib`).
        device: The training device; auto is off on CPU (memory is not the limit there).
        memory_gib: The GPU memory; default: asked from torch.
    """
    if setting in ("on", "off"):
        return setting == "on"
    if device.type != "cuda":
        return False
    if memory_gib is None:
        memory_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    return memory_gib < family.checkpointing_below_gib

"""What makes a step fast on a GPU without changing what it computes.

- regional compilation: `torch.compile` of the denoiser's repeated blocks (diffusers'
  `compile_repeated_blocks`; for the UNets their ResNet, down- and upsampling blocks too,
  `Family.compile_blocks`), so a block is compiled once and reused by every instance;
  a step then launches fused kernels instead of thousands of eager ops, which is what
  holds the GPU back at LoRA sizes (measured in bench/RESULTS.md);
- bf16 compute copies of the LoRA weights, refreshed once per optimizer step
  (`compute_copies`);
- channels-last weights and inputs for the UNet families, the layout cuDNN's bf16
  convolutions run in (otherwise every convolution converts back and forth);
- attention: cuDNN's fused kernel first in the denoiser's training forward when gradient
  checkpointing is off (`training_attention`), the flash / memory-efficient kernels elsewhere
  (`stable_attention`);
- `upload`: host tensors go to the device without making the host wait for the GPU.

Evaluation (validation loss, previews) runs eagerly (`eager`): a handful of no-grad
calls do not repay a second compilation.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .families import Family

log = logging.getLogger(__name__)


def compile_wanted(setting: str, device: torch.device) -> bool:
    """training.compile: on, off, or auto (on with a GPU)."""
    if setting in ("on", "off"):
        return setting == "on"
    return device.type == "cuda"


COMPILE_MODE_ENV = "LORA_COMPILE_MODE"
"""An expert override of torch.compile's mode for the blocks (default, reduce-overhead, max-autotune...)."""


def compile_mode(family: Family, device: torch.device, checkpointing: bool, batch_size: int) -> str | None:
    """torch.compile's mode for the blocks: the environment's override, else the family's on a GPU.

    CUDA graphs (reduce-overhead) replay a block's kernels without launching each from the host:
    they pay where the host's launches, not the GPU, set the pace, which is the UNet families' LoRA
    steps (thousands of small kernels; `Family.compile_mode`) and, at one image per micro-batch, the
    large transformers' steps too (`Family.compile_mode_batch_1`). Not under gradient
    checkpointing, whose recomputation in the backward pass was not measured with graphs.
    None: the default mode.
    """
    override = os.environ.get(COMPILE_MODE_ENV)
    if override:
        return None if override == "default" else override
    if device.type != "cuda" or checkpointing:
        return None
    if batch_size == 1 and family.compile_mode_batch_1:
        return family.compile_mode_batch_1
    return family.compile_mode


COMPILE_SCOPE_ENV = "LORA_COMPILE_SCOPE"
"""An expert override of what is compiled: `blocks` (the repeated blocks) or `model` (the whole denoiser)."""
COMPILE_SCOPES = ("blocks", "model")


def compile_scope() -> str:
    """What to compile: the environment's override, else `blocks` (every family: whole-model
    compilation of SDXL took over 200 s on an H100 machine, bench/RESULTS.md)."""
    scope = os.environ.get(COMPILE_SCOPE_ENV) or "blocks"
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"{COMPILE_SCOPE_ENV}={scope!r}: expected one of {', '.join(COMPILE_SCOPES)}")
    return scope


COMPILE_BLOCKS_ENV = "LORA_COMPILE_BLOCKS"
"""An override of which block classes `blocks` compiles (comma-separated class names; default: the
family's `Family.compile_blocks`, else the denoiser's own ``_repeated_blocks``)."""
BLOCK_VARIANTS = 64
"""Compilations allowed per block class when other blocks than the denoiser's own are named: a UNet's
ResNet blocks come in about a dozen channel and resolution variants, over torch's default limit of 8."""


def compile_blocks(family_blocks: tuple[str, ...] | None) -> list[str]:
    """The block classes `compile_denoiser` compiles: the environment's, else the family's (empty: the
    denoiser's own ``_repeated_blocks``)."""
    named = [name.strip() for name in os.environ.get(COMPILE_BLOCKS_ENV, "").split(",") if name.strip()]
    return named or list(family_blocks or ())


def compile_denoiser(denoiser: torch.nn.Module, mode: str | None = None, scope: str = "blocks",
                     blocks: list[str] | None = None) -> int:
    """Compiles the denoiser in place; returns how many modules were wrapped.

    `blocks` scope: diffusers' regional compilation of the repeated blocks (one compilation per
    block shape, seconds), of the classes `blocks` names (`compile_blocks`; empty: the denoiser's
    ``_repeated_blocks``). `model`: the whole denoiser as one graph, so that what lies between
    the blocks is fused too and, in reduce-overhead mode, replayed as CUDA graphs with everything else.
    """
    kwargs = {"mode": mode} if mode else {}
    if scope == "model":
        denoiser.compile(**kwargs)
        log.info("compiled the whole denoiser (%s), mode %s", type(denoiser).__name__, mode or "default")
        return 1
    if blocks:
        denoiser._repeated_blocks = list(blocks)  # this instance only: diffusers compiles the classes listed here
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, BLOCK_VARIANTS)
    repeated = set(getattr(denoiser, "_repeated_blocks", None) or ())
    denoiser.compile_repeated_blocks(**kwargs)
    count = sum(type(m).__name__ in repeated for m in denoiser.modules())
    log.info("compiled %d repeated blocks (%s) of the denoiser, mode %s", count, ", ".join(sorted(repeated)),
             mode or "default")
    return count


def stable_attention() -> None:
    """scaled_dot_product_attention without the cuDNN backend (flash or memory-efficient instead).

    The default for everything but the denoiser's training forward (`training_attention`):
    with torch 2.11 on an H100 the cuDNN attention backward hit an illegal memory access in
    Flux at 1024 px (4608 tokens) under gradient checkpointing (bench/RESULTS.md).
    """
    torch.backends.cuda.enable_cudnn_sdp(False)


@contextlib.contextmanager
def training_attention(device: torch.device, checkpointing: bool) -> Iterator[None]:
    """The denoiser's training forward with cuDNN attention first, where it was measured safe.

    On an H100 cuDNN's fused attention ran forward + backward 1.2 to 2.2x faster than the
    flash kernel at every denoiser shape, with the same error against float32 (bench/attention.py,
    bench/RESULTS.md). It is not used under gradient checkpointing (the crash in
    `stable_attention`); shapes cuDNN does not take fall through to flash, memory-efficient, math.
    """
    if device.type != "cuda" or checkpointing:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        yield


def channels_last(module: torch.nn.Module) -> None:
    """Convolution weights in channels-last layout (a no-op for modules without 4-d weights)."""
    module.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Compiled modules run eagerly inside: for the few evaluation calls between epochs."""
    with torch.compiler.set_stance("force_eager"):
        yield


def upload(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`tensor` on `device` (in `dtype`, default its own), queued without a host wait.

    A blocking host-to-device copy waits for everything queued on the GPU: once per step
    that is a bubble in which the GPU idles while the host catches up. From ordinary host
    memory a non-blocking copy is staged at once, so the source may be freed right after.
    """
    return tensor.to(device=device, dtype=dtype or tensor.dtype, non_blocking=True)

"""Low-precision compute copies of the LoRA weights: one cast per optimizer step instead of several per layer.

The optimizer trains float32 master weights (in bf16, small updates would round away). Under autocast
that costs casts in every adapted layer, every step: peft casts the layer's bf16 input to the float32 of
its LoRA weights, autocast casts input and weights back to bf16 for each of the two LoRA matmuls, and
the backward pass casts all of it again.

`LORA_ADAPTER_CAST` (`adapter_cast`) chooses between:

- ``op``: the casts as autocast makes them, per matmul;
- ``step``: each adapted layer's ``lora_A`` / ``lora_B`` keep their float32 master parameter (what the
  optimizer, EMA, resume states and exports see) and read a copy in the autocast dtype as their
  ``weight``; `ComputeCopies.refresh` rewrites every copy with one ``torch._foreach_copy_`` after
  each optimizer step. The forward then runs in bf16 without a cast, and each weight's gradient
  reaches its master in float32 through `_ToMaster` (summed over micro-batches in float32, as before).

Applies to the denoiser's LoRA and LoCon layers. Not to DoRA layers (peft's DoRA reads the LoRA
weights outside the layer's forward, also when exporting), LoHa / LoKr (their factors are parameter
dicts multiplied into a delta weight, not modules with a ``weight``), or the text encoders (no
autocast surrounds them: their LoRA runs in float32 either way).
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

ADAPTER_CAST_ENV = "LORA_ADAPTER_CAST"
"""An override of where the LoRA weights are cast to the compute dtype: ``step`` or ``op``."""
ADAPTER_CASTS = ("step", "op")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The compute dtype of each accelerate mixed-precision mode that casts (``no`` runs in float32)."""


def adapter_cast(device: torch.device, mixed_precision: str) -> str:
    """Where the LoRA weights are cast: the environment's override, else ``step`` on a GPU in bf16.

    ``step`` removes a few kernels per adapted layer from every step, which matters where launches and
    memory traffic set the pace (a GPU). fp16 keeps ``op``: its loss scaling was not tried with copies.
    On CPU autocast is off unless `precision.CPU_BF16_ENV` asks for bf16, so ``op`` there.
    """
    override = os.environ.get(ADAPTER_CAST_ENV)
    if override:
        if override not in ADAPTER_CASTS:
            raise ValueError(f"{ADAPTER_CAST_ENV}={override!r}: expected one of {', '.join(ADAPTER_CASTS)}")
        return override
    return "step" if device.type == "cuda" and mixed_precision == "bf16" else "op"


class _ToMaster(torch.autograd.Function):
    """The compute copy in the forward; its gradient goes to the float32 master in the backward."""

    @staticmethod
    def forward(master: torch.Tensor, compute: torch.Tensor) -> torch.Tensor:
        return compute.view_as(compute)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.master_dtype = inputs[0].dtype

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.to(ctx.master_dtype), None


COMPUTE_BUFFER = "weight_compute"
"""The compute copy's buffer on an adapted lora_A / lora_B module (not persistent: never saved)."""


class _ComputeWeight:
    """Makes ``weight`` of a LoRA module read its compute copy, linked to the master for gradients.

    The master stays the module's registered parameter ``weight``: state dicts, ``parameters()``,
    ``.to()`` and peft's loading see it unchanged. Only attribute reads (the layer's forward, peft's
    ``lora_A.weight.dtype`` that picks the input's dtype) see the copy.
    """

    @property
    def weight(self) -> torch.Tensor:
        return _ToMaster.apply(self._parameters["weight"], self._buffers[COMPUTE_BUFFER])


class ComputeLinear(_ComputeWeight, torch.nn.Linear):
    """A LoRA ``nn.Linear`` that computes with its compute copy."""


class ComputeConv2d(_ComputeWeight, torch.nn.Conv2d):
    """A LoCon ``nn.Conv2d`` that computes with its compute copy."""


COMPUTE_CLASSES: dict[type, type] = {torch.nn.Linear: ComputeLinear, torch.nn.Conv2d: ComputeConv2d}


class ComputeCopies:
    """The compute copies of a model's LoRA weights and their masters; `refresh` after every update."""

    def __init__(self, masters: list[torch.nn.Parameter], copies: list[torch.Tensor]):
        self.masters, self.copies = masters, copies

    def __len__(self) -> int:
        return len(self.copies)

    @torch.no_grad()
    def refresh(self) -> None:
        """Rewrite every copy from its master: after each optimizer step and each load or swap of the masters."""
        if self.copies:
            torch._foreach_copy_(self.copies, self.masters)


def install_compute_copies(model: torch.nn.Module, mode: str, mixed_precision: str,
                           adapter: str = "default") -> ComputeCopies:
    """Gives `model`'s LoRA / LoCon modules of `adapter` compute copies (mode ``step``); refreshed already.

    The modules change class in place (to `ComputeLinear` / `ComputeConv2d`), which keeps their
    parameters, names and state dict; layers of other adapters (the bench's reference) are left alone.

    Returns:
        The copies; empty for mode ``op`` or a mixed precision without casts.
    """
    from peft.tuners.lora import LoraLayer

    dtype = AUTOCAST_DTYPES.get(mixed_precision)
    masters: list[torch.nn.Parameter] = []
    copies: list[torch.Tensor] = []
    if mode == "step" and dtype is not None:
        for layer in model.modules():
            if not isinstance(layer, LoraLayer) or adapter not in layer.lora_A or adapter in layer.lora_variant:
                continue
            for module in (layer.lora_A[adapter], layer.lora_B[adapter]):
                compute = COMPUTE_CLASSES.get(type(module))
                if compute is None:
                    continue
                master = module._parameters["weight"]
                module.register_buffer(COMPUTE_BUFFER, master.detach().to(dtype), persistent=False)
                module.__class__ = compute
                masters.append(master)
                copies.append(module._buffers[COMPUTE_BUFFER])
    copies_ = ComputeCopies(masters, copies)
    copies_.refresh()
    log.info("LoRA weights cast %s: %d %s compute copies", mode, len(copies_), dtype or "float32")
    return copies_

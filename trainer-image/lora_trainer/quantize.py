"""training.baseQuantization: the frozen denoiser loaded with quantized linear weights.

diffusers quantizes at load time from a quantization config passed to ``from_pretrained`` (or
``from_single_file``): torchao for fp8, bitsandbytes for nf4. The config reaches the loaders through
`quantized_denoiser`, which `families.base.load_part` reads for the denoiser only, so no family
passes it by itself. peft then wraps the quantized linears (its torchao and bnb LoRA layers): the
adapter's own weights stay in the training dtype and its files are the same as without.

torchao rather than optimum-quanto or hand-written fp8 casts: it is PyTorch's own quantization
library, made for exactly this (float8 / int weight tensors as tensor subclasses), diffusers and
peft integrate it, and its tensors work under torch.compile.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

from .errors import ConfigError

DENOISER_SUBFOLDERS = ("unet", "transformer")
"""The model-folder parts that are a family's denoiser (the only parts quantized)."""
_CONFIG: ContextVar[Any] = ContextVar("denoiser_quantization", default=None)


def quantization_config(kind: str, device_type: str, compute_dtype: torch.dtype) -> Any:
    """The diffusers quantization config of training.baseQuantization `kind` (none: None).

    fp8 is torchao's float8 weight-only config: weights stored as float8 e4m3 with a scale per row,
    computed in `compute_dtype`. It runs on CPU too (the tests train with it there). nf4 is
    bitsandbytes' 4-bit NormalFloat with double quantization; diffusers' bitsandbytes quantizer
    refuses to load without a GPU, so nf4 needs CUDA.

    DoRA cannot train on fp8 (its update is added to the base weight, and torchao's float8 tensor has no
    such addition): the spec refuses the pair (`lora_operator.api.adapters`) and auto skips fp8 for it.

    Raises:
        ConfigError: nf4 without a CUDA GPU.
    """
    if kind == "none":
        return None
    if kind == "fp8":
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8WeightOnlyConfig

        return TorchAoConfig(Float8WeightOnlyConfig())
    if kind == "nf4":
        if device_type != "cuda":
            raise ConfigError("training.baseQuantization nf4 needs a CUDA GPU (bitsandbytes' 4-bit loading in "
                              "diffusers refuses to run without one); use fp8 or none on this node")
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    raise ConfigError(f"training.baseQuantization: unknown value {kind!r} (none, fp8, nf4, auto)")


@contextmanager
def quantized_denoiser(config: Any) -> Iterator[None]:
    """While open, `denoiser_load_kwargs` hands `config` to the loader of the denoiser."""
    token = _CONFIG.set(config)
    try:
        yield
    finally:
        _CONFIG.reset(token)


def denoiser_load_kwargs(subfolder: str) -> dict[str, Any]:
    """Extra loader arguments of a model part: the open quantization config for the denoiser."""
    config = _CONFIG.get()
    if config is None or subfolder not in DENOISER_SUBFOLDERS:
        return {}
    return {"quantization_config": config}


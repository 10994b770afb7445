"""Models for the trainer benchmark: full-size random-weight components built in memory, or tiny folders.

Full-size models come from the public diffusers / transformers configs in `bench/configs/`
(configs only, no weights, nothing downloaded). They are built directly on the target
device, then cast the way each family's `load` casts them, so the recipe sees the same
parts it would load from a model folder. Tokenizers are the byte-level ones of
`tinymodels` (tests/) (every id fits the real vocabularies); only the padded length matters
for speed, and it is the real one (77 for CLIP, 512 for T5).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lora_trainer.families import Components
from tinymodels import build_tiny_model, write_clip_tokenizer, write_t5_tokenizer
from tinymodels.parts import write_qwen_tokenizer

CONFIGS = Path(__file__).resolve().parent / "configs"


def _classes() -> dict[str, Any]:
    """The component classes a config may name: a fixed table, a config never chooses code to import."""
    import diffusers
    import transformers

    names = {
        diffusers: ["UNet2DConditionModel", "FluxTransformer2DModel", "AutoencoderKL", "DDPMScheduler",
                    "FlowMatchEulerDiscreteScheduler", "Flux2Transformer2DModel", "AutoencoderKLFlux2",
                    "ZImageTransformer2DModel", "QwenImageTransformer2DModel", "AutoencoderKLQwenImage",
                    "ChromaTransformer2DModel"],
        transformers: ["CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel", "Qwen3ForCausalLM",
                       "Mistral3ForConditionalGeneration", "Qwen3Model", "Qwen2_5_VLForConditionalGeneration"],
    }
    return {name: getattr(module, name) for module, names_ in names.items() for name in names_}


def load_config(name: str) -> dict[str, Any]:
    """The full-size component configs `name` (a file of bench/configs/: a family, or a variant such as
    flux2-klein-9b)."""
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _tokenizer(kind: str, max_length: int, folder: Path) -> Any:
    from transformers import (
        AutoProcessor,
        AutoTokenizer,
        CLIPTokenizer,
        PreTrainedTokenizerFast,
        Qwen2TokenizerFast,
        T5TokenizerFast,
    )

    from tinymodels.flux2 import write_byte_tokenizer

    if kind == "qwen3":
        write_byte_tokenizer(folder, Qwen2TokenizerFast, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                             pad_token="<|endoftext|>", eos_token="<|im_end|>", unk_token=None)
        return Qwen2TokenizerFast.from_pretrained(folder)
    if kind == "mistral":
        write_byte_tokenizer(folder, PreTrainedTokenizerFast, ["<s>", "</s>", "<pad>", "[IMG]"],
                             bos_token="<s>", eos_token="</s>", pad_token="<pad>")
        return AutoProcessor.from_pretrained(folder)
    if kind == "clip":
        write_clip_tokenizer(folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    elif kind == "qwen":  # Qwen2.5-VL and Qwen3: byte-level BPE with Qwen's chat tokens and template
        write_qwen_tokenizer(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        write_t5_tokenizer(folder)
        tokenizer = T5TokenizerFast.from_pretrained(folder)
    tokenizer.model_max_length = max_length
    return tokenizer


def _module(cls: Any, config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    # Random init happens on the device (seconds for Flux's 12B parameters on a GPU, not minutes on CPU),
    # directly in the family's dtype as from_pretrained(torch_dtype=...) leaves them: a float32 Flux
    # transformer (48 GB) beside its T5 would not fit an 80 GB GPU while being cast.
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if hasattr(cls, "from_config"):  # diffusers
                module = cls.from_config(config)
            else:
                config_cls = cls.config_class
                module = cls(config_cls(**config))
    finally:
        torch.set_default_dtype(default)
    return module.to(dtype).eval()


def build_full_size(family: str, folder: Path, dtype: torch.dtype, device: torch.device) -> Components:
    """Random-weight full-size components of `family` on `device`.

    Args:
        family: A family with a config in bench/configs/.
        folder: Where the tokenizers are written (and the `folder` of the components).
        dtype: Dtype of the frozen weights (the recipe's resolved precision).
        device: Where the weights are created.
    """
    spec, classes = load_config(family), _classes()
    keep32 = set(spec.get("float32", []))

    def part(name: str, entry: dict[str, Any]) -> torch.nn.Module:
        return _module(classes[entry["class"]], entry["config"], device, torch.float32 if name in keep32 else dtype)

    # The denoiser first, quantized before the encoders exist: its bf16 build is the largest moment of the set-up.
    denoiser = quantized(part("denoiser", spec["denoiser"]))
    encoders = [part(f"text_encoder_{i}", e) for i, e in enumerate(spec["text_encoders"])]
    tokenizers = [_tokenizer(e["tokenizer"], e["max_length"], folder / f"tokenizer_{i}")
                  for i, e in enumerate(spec["text_encoders"])]
    scheduler = classes[spec["scheduler"]["class"]].from_config(spec["scheduler"]["config"])
    return Components(
        denoiser=denoiser, vae=part("vae", spec["vae"]), text_encoders=encoders,
        tokenizers=tokenizers, noise_scheduler=scheduler, folder=folder,
    )


def quantized(denoiser: torch.nn.Module) -> torch.nn.Module:
    """The denoiser with its linear weights quantized as training.baseQuantization asks (the open
    `quantize.quantized_denoiser` config that diffusers' loader would apply), else unchanged.

    The trainer's loader quantizes while reading a folder; the bench builds the weights in memory, so it
    applies the same torchao config to the built module (torchao's `quantize_`, nn.Linear layers, as
    diffusers' torchao quantizer does per layer).
    """
    from lora_trainer.quantize import denoiser_load_kwargs

    config = denoiser_load_kwargs("transformer").get("quantization_config")
    if config is None:
        return denoiser
    if getattr(config.quant_method, "value", config.quant_method) != "torchao":
        raise SystemExit(f"bench full-size models: baseQuantization {config!r} is not built here (fp8 / torchao only)")
    from torchao.quantization import quantize_

    quantize_(denoiser, config.get_apply_tensor_subclass())
    return denoiser


def full_size_loader(family: str, device: torch.device):
    """A replacement for `Family.load` that builds the full-size random model instead of reading a folder."""

    def load(folder: Path, dtype: torch.dtype) -> Components:
        return build_full_size(family, folder, dtype, device)

    return load


def tiny_model(family: str, folder: Path) -> Path:
    """A tiny random-weight model folder of `family` (the trainer tests' models), loaded the normal way."""
    return build_tiny_model(family, folder)

"""Writing adapters in the formats users load: kohya, diffusers (PEFT) and textual-inversion files.

- kohya: one .safetensors with ``lora_unet_*`` (Flux: ``lora_transformer_*``), ``lora_te1_*`` and
  ``lora_te2_*`` keys, ``.lora_down`` / ``.lora_up`` / ``.alpha`` per layer and ``ss_*`` metadata,
  as ComfyUI, A1111 and Forge read it.
- diffusers: a folder with ``pytorch_lora_weights.safetensors`` (PEFT keys, adapter config in the
  metadata) that ``pipe.load_lora_weights(folder)`` loads.
- embedding: ``embedding.safetensors`` that ``pipe.load_textual_inversion`` loads.

diffusers' ``convert_state_dict_to_kohya`` sets every alpha to the rank and knows no Flux prefix,
so the kohya keys are made here (a rename, one line per key).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

KOHYA_TEXT_PREFIXES = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def peft_layers(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The LoRA weights of a peft-adapted model (PEFT keys) and each layer's alpha.

    Returns:
        (state dict with keys like ``down_blocks.0.attentions.0.proj_in.lora_A.weight``,
        {module name: alpha}).
    """
    from peft import get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in get_peft_model_state_dict(model).items()}
    alphas = {
        name: float(module.lora_alpha["default"])
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and "default" in module.lora_alpha
    }
    return weights, alphas


def kohya_state_dict(
    layers: dict[str, tuple[dict[str, torch.Tensor], dict[str, float]]], denoiser_prefix: str
) -> dict[str, torch.Tensor]:
    """PEFT layers per component -> kohya keys with alphas.

    Args:
        layers: {component name (unet, transformer, text_encoder, text_encoder_2): peft_layers(...)}.
        denoiser_prefix: lora_unet or lora_transformer.
    """
    out: dict[str, torch.Tensor] = {}
    for component, (weights, alphas) in layers.items():
        prefix = KOHYA_TEXT_PREFIXES.get(component, denoiser_prefix)
        for key, value in weights.items():
            module, kind, _ = key.rsplit(".", 2)
            # kohya names CLIP layers from the transformers 4 layout (text_model.encoder...).
            kohya_module = module if component not in KOHYA_TEXT_PREFIXES or module.startswith("text_model.") \
                else "text_model." + module
            name = f"{prefix}_{kohya_module.replace('.', '_')}"
            out[f"{name}.{'lora_down' if kind == 'lora_A' else 'lora_up'}.weight"] = value
            out[f"{name}.alpha"] = torch.tensor(alphas[module], dtype=torch.float32)
    return out


def write_kohya(
    path: Path,
    layers: dict[str, tuple[dict[str, torch.Tensor], dict[str, float]]],
    denoiser_prefix: str,
    metadata: dict[str, Any],
) -> Path:
    """Write a kohya-format LoRA file; `metadata` values become ``ss_*`` strings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", **{f"ss_{k}": _meta_str(v) for k, v in sorted(metadata.items())}}
    write_safetensors(path, kohya_state_dict(layers, denoiser_prefix), meta)
    return path


def write_diffusers(
    folder: Path,
    layers: dict[str, tuple[dict[str, torch.Tensor], dict[str, float]]],
    configs: dict[str, dict[str, Any]],
) -> Path:
    """Write a diffusers LoRA folder (``pytorch_lora_weights.safetensors``) for load_lora_weights.

    Args:
        folder: Destination folder (created).
        layers: {component name: peft_layers(...)}.
        configs: {component name: the LoraConfig as a dict}; stored so loading restores alpha.
    """
    from diffusers.loaders.lora_base import LoraBaseMixin

    LoraBaseMixin._save_lora_weights(
        save_directory=folder,
        lora_layers={name: weights for name, (weights, _) in layers.items()},
        lora_metadata={name: _jsonable(configs.get(name)) for name in layers},
        weight_name=LORA_WEIGHT_NAME,
    )
    path = folder / LORA_WEIGHT_NAME
    # Rewrite with a stable header order (safetensors' own writer orders metadata at random).
    with safe_open(str(path), "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is no dict)
        metadata = fh.metadata() or {}
    write_safetensors(path, tensors, metadata)
    return path


def write_embedding(path: Path, vectors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write a textual-inversion file: ``emb_params`` (one encoder) or ``clip_l`` / ``clip_g`` (SDXL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in vectors.items()}
    write_safetensors(path, tensors, {k: _meta_str(v) for k, v in metadata.items()})
    return path


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a .safetensors file with sorted header keys, so equal inputs give equal bytes.

    The format: an 8-byte little-endian header length, a JSON header (dtype, shape and
    byte range per tensor, plus ``__metadata__``) padded to 8 bytes, then the raw data.
    """
    from safetensors.torch import _TYPES  # dtype names as the format spells them

    names = {v: k for k, v in _TYPES.items()}
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[key] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for data in blobs:
            fh.write(data)
    return path


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return path.stat().st_size, digest.hexdigest()


def _meta_str(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _jsonable(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if config is None:
        return None
    return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))

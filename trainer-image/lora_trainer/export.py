"""Writing adapters in the formats users load: kohya, diffusers (PEFT) and textual-inversion files.

- kohya: one .safetensors with sd-scripts' layer names (``lora_unet_*``, ``lora_te*_*``; the family
  names each layer, `Family.kohya_layer`), per layer LoRA ``.lora_down`` / ``.lora_up`` (DoRA: ``.dora_scale``),
  LoHa ``.hada_*`` or LoKr ``.lokr_*`` factors and ``.alpha`` (`kohya_tensors`), and
  the metadata ComfyUI, A1111, Forge and SwarmUI read: sd-scripts' ``ss_*`` keys and the
  ModelSpec (``modelspec.*``) keys.
- diffusers: a folder with ``pytorch_lora_weights.safetensors`` (PEFT keys, adapter config in the
  metadata) that ``pipe.load_lora_weights(folder)`` loads.
- embedding: ``embedding.safetensors`` that ``pipe.load_textual_inversion`` loads.

diffusers' ``convert_state_dict_to_kohya`` sets every alpha to the rank, knows no Flux names and
cannot fuse, so the kohya keys are made here.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .families.base import KohyaLayer, ModelVersion
from .kohya_tensors import PeftLayers, UnknownTensorKind, fuse, kohya_state_dict

__all__ = ["UnknownTensorKind", "fuse", "kohya_state_dict", "peft_layers", "write_diffusers", "write_kohya"]

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
MODELSPEC_VERSION = "1.0.1"
"""The ModelSpec version sd-scripts writes (1.0.1 added modelspec.trigger_phrase)."""

Layers = dict[str, PeftLayers]
"""{component name (unet, transformer, text_encoder, text_encoder_2): peft_layers(...)}."""


def peft_layers(model: torch.nn.Module) -> PeftLayers:
    """The adapter weights of a peft-adapted model (PEFT keys), each module's alpha and rank, and the row norms a
    DoRA module's kohya scale needs (`kohya_tensors`).

    Returns:
        PeftLayers with weights keyed like ``down_blocks.0.attentions.0.proj_in.lora_A.weight``.
    """
    from peft import get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lycoris_utils import LycorisLayer

    weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in get_peft_model_state_dict(model).items()}
    alphas, ranks, dora_norms = {}, {}, {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_alpha:
            alphas[name], ranks[name] = float(module.lora_alpha["default"]), int(module.r["default"])
            if module.use_dora.get("default"):
                dora_norms[name] = _row_norms(module)
        elif isinstance(module, LycorisLayer) and "default" in module.alpha:
            alphas[name], ranks[name] = float(module.alpha["default"]), int(module.r["default"])
    return PeftLayers(weights, alphas, ranks, dora_norms)


@torch.no_grad()
def _row_norms(module: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(||W||, ||W + delta||) per output row of a DoRA module, float32 on the CPU."""
    base = module.get_base_layer().weight.detach().float()
    merged = base + module.get_delta_weight("default").detach().float().reshape(base.shape)
    return base.flatten(1).norm(dim=1).cpu(), merged.flatten(1).norm(dim=1).cpu()


def modelspec(version: ModelVersion, adapter: str, *, title: str, resolution: str, trigger_phrase: str = "",
              ) -> dict[str, str]:
    """The ModelSpec keys sd-scripts writes into a LoRA (SwarmUI, ComfyUI and Forge read them).

    Args:
        version: The base model's names (`Family.model_version`).
        adapter: lora or textual-inversion (the architecture's suffix).
        title: Human-readable name.
        resolution: Training resolution, ``WIDTHxHEIGHT``.
        trigger_phrase: Words that call the concept up in a prompt ("" if none).
    """
    meta = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": f"{version.architecture}/{adapter}",
        "modelspec.implementation": version.implementation,
        "modelspec.title": title,
        "modelspec.resolution": resolution,
        "modelspec.date": build_date().isoformat(),
    }
    if version.prediction_type:
        meta["modelspec.prediction_type"] = version.prediction_type
    if trigger_phrase:
        meta["modelspec.trigger_phrase"] = trigger_phrase
    return meta


def build_date() -> datetime.date:
    """Today (UTC), or the day of ``SOURCE_DATE_EPOCH`` (reproducible builds), so reruns give equal bytes."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    now = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch else datetime.datetime.now(datetime.UTC)
    return now.date()


def trigger_phrase(caption_prefix: str) -> str:
    """The trigger of a caption prefix: ``"tkxw, "`` -> ``"tkxw"``."""
    return caption_prefix.strip().strip(",").strip()


def write_kohya(
    path: Path,
    layers: Layers,
    naming: Callable[[str, str], KohyaLayer],
    metadata: dict[str, Any],
    version: ModelVersion,
    spec_keys: dict[str, str],
) -> Path:
    """Write a kohya-format LoRA file.

    Args:
        path: Destination file.
        layers: {component name: peft_layers(...)}.
        naming: The family's `kohya_layer`.
        metadata: Training facts; each becomes an ``ss_<key>`` string.
        version: The base model's names: ``ss_base_model_version`` and ``ss_v2``.
        spec_keys: The ``modelspec.*`` keys (`modelspec`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", **{f"ss_{k}": _meta_str(v) for k, v in sorted(metadata.items())},
            "ss_base_model_version": version.kohya, "ss_v2": str(version.v2), **spec_keys}
    write_safetensors(path, kohya_state_dict(layers, naming), meta)
    return path


def write_diffusers(
    folder: Path,
    layers: Layers,
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
        lora_layers={name: PeftLayers(*peft).weights for name, peft in layers.items()},
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

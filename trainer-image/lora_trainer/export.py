"""Writing adapters in the formats users load: kohya, diffusers (PEFT) and textual-inversion files.

- kohya: one .safetensors with sd-scripts' layer names (``lora_unet_*``, ``lora_te*_*``; the family
  names each layer, `Family.kohya_layer`), ``.lora_down`` / ``.lora_up`` / ``.alpha`` per layer, and
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

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
KOHYA_KINDS = {"lora_A": "lora_down", "lora_B": "lora_up"}
"""The PEFT tensors a kohya LoRA layer holds (``<module>.lora_A.weight`` -> ``<layer>.lora_down.weight``)."""
MODELSPEC_VERSION = "1.0.1"
"""The ModelSpec version sd-scripts writes (1.0.1 added modelspec.trigger_phrase)."""

Layers = dict[str, tuple[dict[str, torch.Tensor], dict[str, float]]]
"""{component name (unet, transformer, text_encoder, text_encoder_2): peft_layers(...)}."""


class UnknownTensorKind(ValueError):
    """An adapter tensor the kohya format has no place for (a DoRA magnitude, a LoKr factor, a bias)."""


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


def lora_pairs(component: str, weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT weights -> {module: {"lora_A": down, "lora_B": up}}.

    Raises:
        UnknownTensorKind: a tensor other than ``lora_A.weight`` / ``lora_B.weight``, or a module
            with only one of them (written as lora_up it would corrupt the file).
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        split = key.rsplit(".", 2)
        module, kind, leaf = split if len(split) == 3 else ("", "", key)
        if kind not in KOHYA_KINDS or leaf != "weight":
            raise UnknownTensorKind(f"{component}.{key}: the kohya format holds only LoRA lora_A / lora_B "
                                    "weights; this adapter cannot be written as kohya (use format diffusers)")
        pairs.setdefault(module, {})[kind] = value
    for module, pair in pairs.items():
        if len(pair) != len(KOHYA_KINDS):
            raise UnknownTensorKind(f"{component}.{module}: has only {sorted(pair)}; a LoRA layer needs lora_A "
                                    "and lora_B")
    return pairs


def fuse(pieces: list[tuple[torch.Tensor, torch.Tensor, float]]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One LoRA on a fused layer (BFL's qkv, linear1) from the LoRAs of its parts, in output order.

    ``lora_down`` stacks the parts' down matrices (rank = the sum of their ranks) and ``lora_up`` is
    block-diagonal, so part i's rows see only part i's down rows: up @ down is the parts' updates
    stacked, exactly. Loaders scale a layer by alpha / rank with the fused rank (ComfyUI, InvokeAI,
    diffusers' sd-scripts converter), so alpha grows with the rank as in sd-scripts'
    ``convert_flux_lora.py``; a part whose alpha / rank differs from the first's has it folded into
    its up matrix.

    Args:
        pieces: (lora_down, lora_up, alpha) per part, in the order of the fused output rows.

    Returns:
        (lora_down, lora_up, alpha) of the fused layer.
    """
    if any(down.ndim != 2 for down, _, _ in pieces):
        raise ValueError("only linear LoRA layers can be fused")
    scale = pieces[0][2] / pieces[0][0].shape[0]
    ups = [up * (alpha / down.shape[0] / scale) for down, up, alpha in pieces]  # x 1.0 (exact) when equal
    down = torch.cat([down for down, _, _ in pieces], dim=0)
    return down, torch.block_diag(*ups), scale * down.shape[0]


def kohya_state_dict(layers: Layers, naming: Callable[[str, str], KohyaLayer]) -> dict[str, torch.Tensor]:
    """PEFT layers per component -> kohya keys with alphas, fused where `naming` says so.

    Args:
        layers: {component name: peft_layers(...)}.
        naming: The family's `kohya_layer(component, module)`.

    Raises:
        UnknownTensorKind: see `lora_pairs`.
        ValueError: a module without a kohya name, or a fused layer with parts missing.
    """
    fused: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor, float]]] = {}
    expected: dict[str, int] = {}
    for component, (weights, alphas) in layers.items():
        for module, pair in lora_pairs(component, weights).items():
            layer = naming(component, module)
            fused.setdefault(layer.name, {})[layer.part] = (pair["lora_A"], pair["lora_B"], alphas[module])
            expected[layer.name] = layer.parts
    out: dict[str, torch.Tensor] = {}
    for name, parts in fused.items():
        if sorted(parts) != list(range(expected[name])):
            raise ValueError(f"{name}: fuses {expected[name]} modules but only parts {sorted(parts)} have a LoRA")
        down, up, alpha = fuse([parts[i] for i in sorted(parts)]) if len(parts) > 1 else parts[0]
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


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

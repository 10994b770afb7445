"""PEFT adapter tensors -> the tensors of a kohya / LyCORIS file, per layer, as ComfyUI, A1111 and Forge read them.

One adapted module becomes one kohya layer (``<layer>.<suffix>``) holding, by adapter kind:

- LoRA: ``lora_down.weight`` (PEFT lora_A), ``lora_up.weight`` (lora_B), ``alpha``; the loaders add
  ``alpha / rank * up @ down``, rank = the rows of lora_down.
- DoRA (a LoRA with a magnitude): also ``dora_scale`` of shape (out, 1[, 1, 1]), on the output axis as PEFT
  trains it. ComfyUI (``comfy/weight_adapter/base.py: weight_decompose``) tells the axis by the first
  dimension and, on the output axis, scales each row of ``W + delta`` by ``dora_scale / ||W||``: the norm
  of the *base* row. PEFT scales by ``magnitude / ||W + delta||``, so the file holds
  ``magnitude * ||W|| / ||W + delta||``, which gives PEFT's merged weight in ComfyUI exactly. A1111 / Forge
  and ComfyUI before the output axis read dora_scale on the input axis only and cannot load it.
- LoHa: ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``, ``alpha``; the loaders add
  ``alpha / rank * (w1_a @ w1_b) * (w2_a @ w2_b)`` (element-wise product), rank = the rows of hada_w1_b.
- LoKr: ``lokr_w1`` (or ``lokr_w1_a`` / ``lokr_w1_b``), ``lokr_w2`` (or ``lokr_w2_a`` / ``lokr_w2_b``),
  ``alpha``; the loaders add ``kron(w1, w2)`` times ``alpha / rank`` when a factor is stored as a product
  (rank = its inner dimension) and times 1 when both are whole, where PEFT still scales by alpha / r: then
  the scale is folded into lokr_w1.

Fused layers (Flux.1's qkv, linear1): a LoRA and a LoHa fuse exactly (their factors stack, block-diagonal
where they meet the output rows), a DoRA's per-row scale stacks with its rows; a Kronecker product of the
whole does not split into its parts' products, so a LoKr is refused there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .families.base import KohyaLayer

PEFT_KINDS = {
    "lora": {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
             "lora_magnitude_vector": "dora_scale"},
    "loha": {name: name for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")},
    "lokr": {name: name for name in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")},
}
"""PEFT tensor (after the module path) -> its kohya suffix, per adapter kind."""
REQUIRED = {
    "lora": ({"lora_A.weight", "lora_B.weight"},),
    "loha": ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"},),
    "lokr": ({"lokr_w1"}, {"lokr_w1_a", "lokr_w1_b"}),  # and one of the lokr_w2 forms (checked below)
}
_KIND_OF = {peft: kind for kind, names in PEFT_KINDS.items() for peft in names}


class UnknownTensorKind(ValueError):
    """An adapter tensor the kohya format has no place for (a bias, a Tucker core), or a layer missing a factor."""


class PeftLayers(NamedTuple):
    """The adapter of one component (denoiser or text encoder), as `export.peft_layers` reads it.

    Attributes:
        weights: PEFT state dict (``<module>.lora_A.weight``, ``<module>.hada_w1_a``, ...), float32 on the CPU.
        alphas: {module: alpha} (the scale numerator).
        ranks: {module: r}.
        dora_norms: {module: (||W|| per output row, ||W + delta|| per output row)} of the DoRA modules.
    """

    weights: dict[str, torch.Tensor]
    alphas: dict[str, float]
    ranks: dict[str, int] = {}
    dora_norms: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


@dataclass
class LayerPart:
    """One adapted module in kohya terms: its kind, kohya tensors (no alpha) and alpha."""

    kind: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    alpha: float = 1.0


def module_tensors(component: str, weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT weights -> {module: {PEFT tensor name: tensor}}.

    Raises:
        UnknownTensorKind: a tensor of no kind the kohya format holds (``lora_B.bias``, ``hada_t1``, ...).
    """
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        name = next((n for n in _KIND_OF if key.endswith("." + n)), None)
        if name is None:
            raise UnknownTensorKind(f"{component}.{key}: the kohya format holds LoRA (lora_A / lora_B, DoRA "
                                    "magnitude), LoHa (hada_w*) and LoKr (lokr_w*) factors only; this tensor has no "
                                    "place there (use format diffusers)")
        out.setdefault(key[: -len(name) - 1], {})[name] = value
    return out


def layer_part(component: str, module: str, tensors: dict[str, torch.Tensor], layers: PeftLayers) -> LayerPart:
    """The kohya tensors of one module (see the module docstring for what each kind holds).

    Raises:
        UnknownTensorKind: kinds mixed in one module, or a factor missing.
    """
    kinds = {_KIND_OF[name] for name in tensors}
    kind = kinds.pop() if len(kinds) == 1 else None
    complete = kind is not None and any(need <= tensors.keys() for need in REQUIRED[kind]) and (
        kind != "lokr" or "lokr_w2" in tensors or {"lokr_w2_a", "lokr_w2_b"} <= tensors.keys())
    if not complete:
        raise UnknownTensorKind(f"{component}.{module}: has {sorted(tensors)}, not the complete factors of one "
                                "LoRA, LoHa or LoKr layer")
    part = LayerPart(kind, {PEFT_KINDS[kind][name]: value for name, value in tensors.items()}, layers.alphas[module])
    if "dora_scale" in part.tensors:
        base_norm, merged_norm = layers.dora_norms[module]
        magnitude = part.tensors["dora_scale"].reshape(-1)
        shape = (-1, *[1] * (part.tensors["lora_down.weight"].ndim - 1))
        part.tensors["dora_scale"] = (magnitude * base_norm / merged_norm).reshape(shape)
    if kind == "lokr" and "lokr_w1" in part.tensors and "lokr_w2" in part.tensors:
        rank = layers.ranks[module]  # both factors whole: loaders add kron(w1, w2) unscaled
        part.tensors["lokr_w1"] = part.tensors["lokr_w1"] * (part.alpha / rank)
        part.alpha = float(rank)
    return part


def rank_of(part: LayerPart) -> int:
    """The rank a loader divides alpha by."""
    names = {"lora": "lora_down.weight", "loha": "hada_w1_b"}
    if part.kind in names:
        return part.tensors[names[part.kind]].shape[0]
    factor = part.tensors.get("lokr_w2_b", part.tensors.get("lokr_w1_b"))
    return factor.shape[0] if factor is not None else int(part.alpha)


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


def fuse_parts(name: str, parts: list[LayerPart]) -> LayerPart:
    """One kohya layer from the parts of a fused layer, in output order (see the module docstring).

    Raises:
        ValueError: LoKr parts, or parts of different kinds.
    """
    kind = parts[0].kind
    if any(p.kind != kind for p in parts) or kind == "lokr":
        raise ValueError(f"{name}: fuses {len(parts)} modules, and a {kind} adapter cannot be written as one "
                         "adapter of the fused layer (a Kronecker product does not split by rows); train type "
                         "lora or loha for this family")
    if kind == "lora":
        down, up, alpha = fuse([(p.tensors["lora_down.weight"], p.tensors["lora_up.weight"], p.alpha) for p in parts])
        out = LayerPart(kind, {"lora_down.weight": down, "lora_up.weight": up}, alpha)
        scales = [p.tensors.get("dora_scale") for p in parts]
        if any(s is not None for s in scales):
            if any(s is None for s in scales):
                raise ValueError(f"{name}: only some of its parts have a DoRA magnitude")
            out.tensors["dora_scale"] = torch.cat(scales, dim=0)
        return out
    # LoHa: each Hadamard factor is stacked like a LoRA (a_i block-diagonal, b_i stacked), so the product of
    # the stacked factors is the parts' products stacked; the first part's alpha / rank stays, others fold it.
    scale = parts[0].alpha / rank_of(parts[0])
    tensors = {
        "hada_w1_a": torch.block_diag(*[p.tensors["hada_w1_a"] * (p.alpha / rank_of(p) / scale) for p in parts]),
        "hada_w2_a": torch.block_diag(*[p.tensors["hada_w2_a"] for p in parts]),
        "hada_w1_b": torch.cat([p.tensors["hada_w1_b"] for p in parts], dim=0),
        "hada_w2_b": torch.cat([p.tensors["hada_w2_b"] for p in parts], dim=0),
    }
    return LayerPart(kind, tensors, scale * tensors["hada_w1_b"].shape[0])


def kohya_state_dict(layers: dict[str, PeftLayers], naming: Callable[[str, str], KohyaLayer],
                     ) -> dict[str, torch.Tensor]:
    """PEFT layers per component -> kohya keys with alphas, fused where `naming` says so.

    Args:
        layers: {component name: peft_layers(...)}.
        naming: The family's `kohya_layer(component, module)`.

    Raises:
        UnknownTensorKind: see `module_tensors` and `layer_part`.
        ValueError: a module without a kohya name, a fused layer with parts missing, or one that cannot fuse.
    """
    fused: dict[str, dict[int, LayerPart]] = {}
    expected: dict[str, int] = {}
    for component, peft in layers.items():
        peft = PeftLayers(*peft)
        for module, tensors in module_tensors(component, peft.weights).items():
            layer = naming(component, module)
            fused.setdefault(layer.name, {})[layer.part] = layer_part(component, module, tensors, peft)
            expected[layer.name] = layer.parts
    out: dict[str, torch.Tensor] = {}
    for name, parts in fused.items():
        if sorted(parts) != list(range(expected[name])):
            raise ValueError(f"{name}: fuses {expected[name]} modules but only parts {sorted(parts)} have a LoRA")
        part = fuse_parts(name, [parts[i] for i in sorted(parts)]) if len(parts) > 1 else parts[0]
        for suffix, value in part.tensors.items():
            out[f"{name}.{suffix}"] = value.contiguous()
        out[f"{name}.alpha"] = torch.tensor(part.alpha, dtype=torch.float32)
    return out

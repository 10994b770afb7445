"""How public loaders place kohya LoRA keys on a model, written here from their rules (not imported).

The tests map every key of an exported kohya file through these rules onto the modules of the
model in the layout those tools load (the original LDM / SGM UNet, BFL's Flux) and fail on a key
that lands nowhere or on a module of another shape.

- ComfyUI (``comfy/lora.py``): a UNet / diffusion-model key is ``lora_unet_`` + the module path of
  the original model with dots as underscores; for SD1.x / SDXL the same table also takes the
  diffusers module path (``comfy/utils.py: unet_to_diffusers`` gives the original name of each).
  CLIP keys are ``lora_te_`` / ``lora_te1_`` (CLIP-L) and ``lora_te2_`` (CLIP-G) +
  ``text_model_encoder_layers_{i}_{self_attn_q_proj,...,mlp_fc1,...}``.
- InvokeAI (``flux_kohya_lora_conversion_utils.py``): a file is Flux kohya only when *every* key
  matches one of two patterns (block layers and CLIP-L layers); ``lora_unet_double_blocks_0_img_attn_qkv``
  becomes ``double_blocks.0.img_attn.qkv``.
- ComfyUI's generic rule (same function): any key ``diffusion_model.<module>`` names the module of that
  path in ComfyUI's own model (``comfy/ldm/...``); for Qwen-Image those are the diffusers names, for
  Z-Image the original NextDiT names (`z_image_comfy_checkpoint`, from ``comfy/utils.py:
  z_image_to_diffusers``: q, k, v fused into ``attention.qkv``, ``to_out.0`` is ``attention.out``).
- Loaders scale a layer by ``alpha / rank`` with rank = the rows of ``lora_down`` and add
  ``scale * lora_up @ lora_down`` to the module's weight.

The layouts: `ldm_unet_names` gives the original name of each diffusers UNet parameter and
`bfl_flux_checkpoint` turns a diffusers Flux transformer into BFL's layout (q, k, v fused into
``qkv``; q, k, v and the MLP input fused into a single block's ``linear1``). Both are checked
against diffusers' own single-file converters, which read the original layouts.
"""

from __future__ import annotations

import re

import torch

LORA_CLIP_MAP = {
    "mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}
INVOKE_FLUX_TRANSFORMER = re.compile(
    r"lora_unet_(\w+_blocks)_(\d+)_(img_attn|img_mlp|img_mod|txt_attn|txt_mlp|txt_mod|linear1|linear2|modulation)_?(.*)")
INVOKE_FLUX_CLIP = re.compile(r"lora_te1_text_model_encoder_layers_(\d+)_(mlp|self_attn)_(\w+)\.?.*")
LAYER_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")
"""The tensors of one LoRA layer in a kohya-style file."""
RESNET_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def layers_of(kohya: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{layer: {"lora_down.weight": ..., "lora_up.weight": ..., "alpha": ...}} of a kohya state dict (layer
    names may hold dots: ``diffusion_model.layers.0.attention.qkv``)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in kohya.items():
        part = next((p for p in LAYER_PARTS if key.endswith("." + p)), key.split(".", 1)[-1])
        out.setdefault(key[: -len(part) - 1], {})[part] = value
    return out


def comfy_model_key_map(weights: dict[str, tuple[int, ...]], prefix: str = "lora_unet_") -> dict[str, str]:
    """ComfyUI's rule for the diffusion model: ``lora_unet_`` + weight path (dots -> underscores)."""
    return {prefix + name[: -len(".weight")].replace(".", "_"): name for name in weights if name.endswith(".weight")}


def comfy_clip_key_map(encoders: dict[str, torch.nn.Module]) -> dict[str, tuple[str, torch.nn.Module]]:
    """ComfyUI's CLIP keys: {kohya layer: (encoder name, module)} for encoders named clip_l / clip_g."""
    key_map = {}
    for clip, encoder in encoders.items():
        prefixes = {"clip_l": ("lora_te", "lora_te1"), "clip_g": ("lora_te2",)}[clip]
        for b in range(len(_clip_layers(encoder))):
            for path, kohya in LORA_CLIP_MAP.items():
                module = _clip_layers(encoder)[b].get_submodule(path)
                for prefix in prefixes:
                    key_map[f"{prefix}_text_model_encoder_layers_{b}_{kohya}"] = (clip, module)
    return key_map


def _clip_layers(encoder: torch.nn.Module) -> torch.nn.ModuleList:
    text_model = getattr(encoder, "text_model", encoder)  # transformers 5's CLIPTextModel has no text_model level
    return text_model.encoder.layers


def invoke_flux_detects(keys: list[str]) -> bool:
    """InvokeAI's Flux kohya detector: every key is a block layer or a CLIP-L layer."""
    return all(INVOKE_FLUX_TRANSFORMER.match(k) or INVOKE_FLUX_CLIP.match(k) for k in keys)


def invoke_flux_module(layer: str) -> str:
    """InvokeAI's BFL module name of a Flux kohya transformer layer."""
    match = INVOKE_FLUX_TRANSFORMER.match(layer)
    assert match, f"{layer}: InvokeAI's Flux kohya pattern does not match"
    name = f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
    return name + (f".{match.group(4)}" if match.group(4) else "")


def check_layer_fits(layer: str, parts: dict[str, torch.Tensor], weight_shape: tuple[int, ...]) -> None:
    """The layer's down / up / alpha fit a module weight of `weight_shape` (out, in[, kh, kw])."""
    down, up = parts["lora_down.weight"], parts["lora_up.weight"]
    assert set(parts) == {"lora_down.weight", "lora_up.weight", "alpha"}, (layer, sorted(parts))
    assert parts["alpha"].ndim == 0, layer
    assert up.shape[1] == down.shape[0], f"{layer}: up {tuple(up.shape)} does not take down's rank {down.shape[0]}"
    assert (up.shape[0], down.shape[1]) == tuple(weight_shape[:2]), \
        f"{layer}: LoRA {up.shape[0]}x{down.shape[1]} on a weight of shape {tuple(weight_shape)}"
    if len(weight_shape) == 4:  # conv: down carries the kernel, up is 1x1
        assert tuple(down.shape[2:]) == tuple(weight_shape[2:]) and tuple(up.shape[2:]) == (1, 1), layer


def merge(weights: dict[str, torch.Tensor], layers: dict[str, dict[str, torch.Tensor]],
          key_map: dict[str, str]) -> dict[str, torch.Tensor]:
    """The weights with each layer applied as ComfyUI applies it (`comfy_merged`; a LoRA: W + alpha / rank * up @
    down)."""
    out = dict(weights)
    for layer, parts in layers.items():
        name = key_map[layer]
        out[name] = comfy_merged(out[name], parts)
    return out


# ----------------------------------------------------------------------------------- SD1.x / SDXL UNet
def ldm_unet_names(unet: torch.nn.Module) -> dict[str, str]:
    """{diffusers UNet parameter: its name in the original (LDM / SGM) UNet}, by ComfyUI's unet_to_diffusers."""
    per = unet.config.layers_per_block
    blocks = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
              "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2",
              "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
              "mid_block.resnets.1": "middle_block.2"}
    for i, block in enumerate(unet.down_blocks):
        for j in range(per):
            blocks[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{1 + i * (per + 1) + j}.0"
            if getattr(block, "attentions", None):
                blocks[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{1 + i * (per + 1) + j}.1"
        if block.downsamplers:
            blocks[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (per + 1)}.0.op"
    for i, block in enumerate(unet.up_blocks):
        attentions = bool(getattr(block, "attentions", None))
        for j in range(per + 1):
            blocks[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{i * (per + 1) + j}.0"
            if attentions:
                blocks[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{i * (per + 1) + j}.1"
        if block.upsamplers:
            last = f"output_blocks.{i * (per + 1) + per}"
            blocks[f"up_blocks.{i}.upsamplers.0.conv"] = f"{last}.{2 if attentions else 1}.conv"
    names = {}
    for param in (k.replace(".base_layer.", ".") for k in unet.state_dict() if ".lora_" not in k):  # peft-adapted too
        prefix = max((b for b in blocks if param.startswith(b + ".")), key=len)
        rest = param[len(prefix) + 1:]
        if ".resnets." in f".{prefix}.":
            head, _, tail = rest.partition(".")
            rest = f"{RESNET_PARTS[head]}.{tail}"
        names[param] = f"{blocks[prefix]}.{rest}"
    return names


# ------------------------------------------------------------------------------------------- Flux
def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """diffusers' final norm projects to (scale, shift), BFL's to (shift, scale)."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _putter(state: dict[str, torch.Tensor], out: dict[str, torch.Tensor]):
    """put(bfl, *diffusers): out[bfl.leaf] = the diffusers modules' weights (and biases) stacked on dim 0 (fused)."""

    def put(bfl: str, *diffusers: str) -> None:
        for leaf in ("weight", "bias"):
            if f"{diffusers[0]}.{leaf}" in state:
                out[f"{bfl}.{leaf}"] = torch.cat([state[f"{d}.{leaf}"] for d in diffusers], dim=0)

    return put


def _bfl_attention(put, state, out, i: int) -> None:
    """A double block's fused qkv of both streams and its q / k norms (Flux.1 and Flux.2 name them alike)."""
    d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
    put(f"{b}.img_attn.qkv", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v")
    put(f"{b}.txt_attn.qkv", f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj")
    for diffusers, bfl in (("attn.norm_q", "img_attn.norm.query_norm"), ("attn.norm_k", "img_attn.norm.key_norm"),
                           ("attn.norm_added_q", "txt_attn.norm.query_norm"),
                           ("attn.norm_added_k", "txt_attn.norm.key_norm")):
        out[f"{b}.{bfl}.scale"] = state[f"{d}.{diffusers}.weight"]


def bfl_flux_checkpoint(state: dict[str, torch.Tensor], num_layers: int, num_single_layers: int,
                        ) -> dict[str, torch.Tensor]:
    """A diffusers FluxTransformer2DModel state dict in BFL's layout (the original Flux checkpoint keys)."""
    out: dict[str, torch.Tensor] = {}
    put = _putter(state, out)

    for name, bfl in (("x_embedder", "img_in"), ("context_embedder", "txt_in"), ("proj_out", "final_layer.linear"),
                      ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
                      ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
                      ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
                      ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
                      ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
                      ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")):
        put(bfl, name)
    for leaf in ("weight", "bias"):
        if f"norm_out.linear.{leaf}" in state:  # Chroma's final norm has no projection of its own
            out[f"final_layer.adaLN_modulation.1.{leaf}"] = _swap_halves(state[f"norm_out.linear.{leaf}"])
    _bfl_approximator(state, out)
    for i in range(num_layers):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        _bfl_attention(put, state, out, i)
        for diffusers, bfl in (("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj"),
                               ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"),
                               ("ff_context.net.0.proj", "txt_mlp.0"), ("ff_context.net.2", "txt_mlp.2"),
                               ("norm1.linear", "img_mod.lin"), ("norm1_context.linear", "txt_mod.lin")):
            put(f"{b}.{bfl}", f"{d}.{diffusers}")
    for i in range(num_single_layers):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        put(f"{b}.linear1", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp")
        put(f"{b}.linear2", f"{d}.proj_out")
        put(f"{b}.modulation.lin", f"{d}.norm.linear")
        out[f"{b}.norm.query_norm.scale"] = state[f"{d}.attn.norm_q.weight"]
        out[f"{b}.norm.key_norm.scale"] = state[f"{d}.attn.norm_k.weight"]
    return out


# ------------------------------------------------------------------------------------- 2025 families
def comfy_generic_key_map(weights: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """ComfyUI's generic rule: ``diffusion_model.<module>`` -> that module's weight (the keys of `weights` are
    the ComfyUI model's own parameter names, without the ``diffusion_model.`` prefix)."""
    return {"diffusion_model." + name[: -len(".weight")]: name for name in weights if name.endswith(".weight")}


def z_image_comfy_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ZImageTransformer2DModel state dict in ComfyUI's (original NextDiT) layout, the inverse
    of ``comfy/utils.py: z_image_to_diffusers``: per block q, k, v stacked into ``attention.qkv``,
    ``attention.to_out.0`` -> ``attention.out``, ``attention.norm_q/k`` -> ``attention.q_norm/k_norm``, the
    rest of a block unchanged; the 2-1 patch embedder / final layer lose their ``all_...2-1`` level."""
    out: dict[str, torch.Tensor] = {}
    blocks = sorted({k.rsplit(".attention.", 1)[0] for k in state if ".attention.to_q." in k})
    for block in blocks:
        for leaf in ("weight", "bias"):
            if f"{block}.attention.to_q.{leaf}" in state:
                out[f"{block}.attention.qkv.{leaf}"] = torch.cat(
                    [state[f"{block}.attention.to_{x}.{leaf}"] for x in "qkv"], dim=0)
    renames = {".attention.to_out.0.": ".attention.out.", ".attention.norm_q.": ".attention.q_norm.",
               ".attention.norm_k.": ".attention.k_norm.", "all_x_embedder.2-1.": "x_embedder.",
               "all_final_layer.2-1.": "final_layer."}
    for key, value in state.items():
        if any(f".attention.to_{x}." in key for x in "qkv"):
            continue
        for old, new in renames.items():
            key = key.replace(old, new) if old.startswith(".") else (new + key[len(old):] if key.startswith(old)
                                                                       else key)
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------- runs
def check_diffusers_reads(bfl: dict[str, torch.Tensor], convert, model: torch.nn.Module) -> None:
    """diffusers' single-file converter `convert` reads every key of `bfl`, back to `model`'s weight shapes."""
    left = dict(bfl)
    converted = convert(left)
    assert not left, f"keys diffusers does not read: {sorted(left)[:5]}"
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == shapes


def _bfl_approximator(state: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    """Chroma's modulation MLP (diffusers' distilled_guidance_layer) in the original checkpoint's names."""
    for key, value in state.items():
        if key.startswith("distilled_guidance_layer."):
            bfl = key.replace(".linear_1.", ".in_layer.").replace(".linear_2.", ".out_layer.")
            out[bfl[: -len(".weight")] + ".scale" if ".norms." in key else bfl] = value


def train_kohya(tmp, family: str, model, data, **overrides):
    """A tiny run writing only the kohya file, text encoders trained; (recipe, state dict, metadata)."""
    from safetensors import safe_open

    from conftest import base_spec, run_recipe_for
    from conftest import merge as merge_spec

    spec = base_spec(family, model, data, tmp / "out", **merge_spec(
        {"training": {"textEncoderLearningRate": 1e-2, "textEncoderRatio": 1.0}, "checkpoints": {"formats": ["kohya"]}},
        overrides))
    recipe = run_recipe_for(tmp, spec)
    with safe_open(str(recipe.outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors"), "pt") as fh:
        return recipe, {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()  # noqa: SIM118 (no dict)


ADAPTER_TENSORS = (".lora_", ".hada_", ".lokr_")
"""Substrings of a peft adapter's own parameters in a model's state dict."""


def plain_and_merged(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A peft-adapted model's base weights and the same weights with its adapters merged by peft itself
    (LoRA, DoRA, LoHa, LoKr: each layer's own ``merge``, on a copy)."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    def base_weights(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k.replace(".base_layer.", "."): v.detach().float() for k, v in m.state_dict().items()
                if not any(a in k for a in ADAPTER_TENSORS)}

    plain = base_weights(model)
    merged_model = copy.deepcopy(model)
    for module in merged_model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    return plain, base_weights(merged_model)


def comfy_merged(weight: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """A weight with one kohya / LyCORIS layer applied as ComfyUI does (``comfy/weight_adapter``: lora.py,
    loha.py, lokr.py and base.py's weight_decompose), at strength 1, written here from its formulas.

    - LoRA: ``alpha / rank * up @ down`` (rank: rows of lora_down).
    - LoHa: ``alpha / rank * (w1_a @ w1_b) * (w2_a @ w2_b)`` (rank: rows of hada_w1_b).
    - LoKr: ``kron(w1, w2)`` with each factor whole or ``a @ b``, times ``alpha / rank`` when a factor is a
      product (rank: rows of its b), else 1; a 4-d w2 gets w1 as (a, c, 1, 1).
    - dora_scale: the result ``W + delta`` is scaled by ``dora_scale / norm``; a dora_scale of W's output
      size is on the output axis and norm is the row norm of the *original* W, otherwise the column norm of
      ``W + delta`` (the input axis); plus float eps.
    """
    alpha = parts.get("alpha")
    if "lora_up.weight" in parts:
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        scale = alpha.item() / down.shape[0] if alpha is not None else 1.0
        delta = up.flatten(1) @ down.flatten(1)
    elif "hada_w1_a" in parts:
        scale = alpha.item() / parts["hada_w1_b"].shape[0] if alpha is not None else 1.0
        delta = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"])
    else:
        rank = None
        w1 = parts.get("lokr_w1")
        if w1 is None:
            rank, w1 = parts["lokr_w1_b"].shape[0], parts["lokr_w1_a"] @ parts["lokr_w1_b"]
        w2 = parts.get("lokr_w2")
        if w2 is None:
            rank, w2 = parts["lokr_w2_b"].shape[0], parts["lokr_w2_a"] @ parts["lokr_w2_b"]
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        scale = alpha.item() / rank if alpha is not None and rank is not None else 1.0
        delta = torch.kron(w1, w2)
    delta = delta.reshape(weight.shape) * scale
    if "dora_scale" not in parts:
        return weight + delta
    dora, calc = parts["dora_scale"], weight + delta
    if dora.shape[0] == weight.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (weight.ndim - 1))
    else:
        norm = calc.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1).reshape(
            weight.shape[1], *[1] * (weight.ndim - 1)).transpose(0, 1)
    return calc * (dora / (norm + torch.finfo(weight.dtype).eps))


# ------------------------------------------------------------------------------------------- Flux.2
def bfl_flux2_checkpoint(state: dict[str, torch.Tensor], num_layers: int, num_single_layers: int,
                         ) -> dict[str, torch.Tensor]:
    """A diffusers Flux2Transformer2DModel state dict in BFL's Flux.2 layout (the original checkpoint keys,
    as diffusers' convert_flux2_transformer_checkpoint_to_diffusers reads them and ComfyUI loads them)."""
    out: dict[str, torch.Tensor] = {}
    put = _putter(state, out)
    for name, bfl in (("x_embedder", "img_in"), ("context_embedder", "txt_in"), ("proj_out", "final_layer.linear"),
                      ("time_guidance_embed.timestep_embedder.linear_1", "time_in.in_layer"),
                      ("time_guidance_embed.timestep_embedder.linear_2", "time_in.out_layer"),
                      ("time_guidance_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
                      ("time_guidance_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
                      ("double_stream_modulation_img.linear", "double_stream_modulation_img.lin"),
                      ("double_stream_modulation_txt.linear", "double_stream_modulation_txt.lin"),
                      ("single_stream_modulation.linear", "single_stream_modulation.lin")):
        put(bfl, name)
    out["final_layer.adaLN_modulation.1.weight"] = _swap_halves(state["norm_out.linear.weight"])
    for i in range(num_layers):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        _bfl_attention(put, state, out, i)
        for diffusers, bfl in (("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj"),
                               ("ff.linear_in", "img_mlp.0"), ("ff.linear_out", "img_mlp.2"),
                               ("ff_context.linear_in", "txt_mlp.0"), ("ff_context.linear_out", "txt_mlp.2")):
            put(f"{b}.{bfl}", f"{d}.{diffusers}")
    for i in range(num_single_layers):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        put(f"{b}.linear1", f"{d}.attn.to_qkv_mlp_proj")
        put(f"{b}.linear2", f"{d}.attn.to_out")
        out[f"{b}.norm.query_norm.scale"] = state[f"{d}.attn.norm_q.weight"]
        out[f"{b}.norm.key_norm.scale"] = state[f"{d}.attn.norm_k.weight"]
    return out

"""Flux transformer weights from the Black Forest Labs layout into diffusers' module names, at any width.

diffusers' own converter (``convert_flux_transformer_checkpoint_to_diffusers``) assumes Flux.1's width
(3072) when it splits a single block's fused ``linear1``; it loads every real Flux.1 file. A narrower
architecture named by ``baseModel.config`` (the tests' tiny model) is converted here instead, with the
split taken from the config, and then handed to the same single-file loader. The block layers come from
the table the kohya export uses (`families.flux`), so a loaded model and an exported LoRA name every
layer alike.
"""

from __future__ import annotations

import torch

from .families.flux import BLOCKS

STANDARD_WIDTH = 3072
"""Flux.1's hidden size (24 heads of 128), the one diffusers' converter handles."""
OUTSIDE_BLOCKS = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
"""diffusers module -> BFL module, outside the blocks."""
BLOCK_NORMS = {
    "transformer_blocks": {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                           "attn.norm_added_q": "txt_attn.norm.query_norm",
                           "attn.norm_added_k": "txt_attn.norm.key_norm"},
    "single_transformer_blocks": {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"},
}
"""The RMSNorms of q and k (diffusers ``weight``, BFL ``scale``), which LoRAs never touch."""


def width(config: dict) -> int:
    """The transformer's hidden size."""
    return config["num_attention_heads"] * config["attention_head_dim"]


def bfl_to_diffusers(bfl: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A BFL-layout Flux transformer state dict with diffusers' keys.

    Args:
        bfl: The file's tensors (bare or under ``model.diffusion_model.``).
        config: The FluxTransformer2DModel config (its width splits the fused layers).

    Raises:
        KeyError: a tensor the config's architecture needs is not in the file.
    """
    bfl = {k.removeprefix("model.diffusion_model."): v for k, v in bfl.items()}
    inner = width(config)
    out: dict[str, torch.Tensor] = {}
    for module, name in OUTSIDE_BLOCKS.items():
        for param in ("weight", "bias"):
            if f"{name}.{param}" not in bfl:
                continue
            value = bfl[f"{name}.{param}"]
            if module == "norm_out.linear":  # BFL's final modulation is (shift, scale), diffusers' (scale, shift)
                shift, scale = value.chunk(2)
                value = torch.cat([scale, shift])
            out[f"{module}.{param}"] = value
    counts = {"transformer_blocks": config["num_layers"], "single_transformer_blocks": config["num_single_layers"]}
    for blocks, (bfl_blocks, layers) in BLOCKS.items():
        for index in range(counts[blocks]):
            for module, layer in layers.items():
                for param in ("weight", "bias"):
                    # the kohya layer name is the BFL module path with its last dot as _ (img_attn_qkv)
                    fused = bfl[f"{bfl_blocks}.{index}.{'.'.join(layer.name.rsplit('_', 1))}.{param}"]
                    # q, k, v are `inner` rows each; a single block's MLP input takes the rest of linear1
                    start = layer.part * inner
                    end = start + inner if layer.parts > 1 and layer.part < 3 else fused.shape[0]
                    out[f"{blocks}.{index}.{module}.{param}"] = fused[start:end] if layer.parts > 1 else fused
            for module, name in BLOCK_NORMS[blocks].items():
                out[f"{blocks}.{index}.{module}.weight"] = bfl[f"{bfl_blocks}.{index}.{name}.scale"]
    return out

"""Writes a diffusers model folder as the single-file checkpoint users download (test fixture).

SD1.5 and SDXL go to the original Stability layout that A1111, ComfyUI and Civitai files use
(``model.diffusion_model.*`` UNet, ``first_stage_model.*`` VAE, ``cond_stage_model.*`` /
``conditioner.embedders.*`` text encoders); a Flux transformer goes to the Black Forest Labs layout
(``double_blocks.N.img_attn.qkv``). The key mapping is the public one of those repositories, written
from their module names (not taken from diffusers; the UNet and Flux names are `kohya_rules`', which
follow ComfyUI), so that diffusers' single-file loaders reading the result back check it from the
other side.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from kohya_rules import bfl_flux_checkpoint, ldm_unet_names
from safetensors.torch import load_file, save_file

VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no weights in {folder}"
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return state


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


VAE_RULES = [
    (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", "encoder.down.{0}.block.{1}.{2}"),
    (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", "encoder.down.{0}.downsample.{1}"),
    (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", "decoder.up.{up}.block.{1}.{2}"),
    (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", "decoder.up.{up}.upsample.{1}"),
    (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", "{0}.mid.block_{mid}.{2}"),
    (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", "{0}.mid.attn_1.{attn}.{2}"),
]
"""diffusers AutoencoderKL key -> LDM key. The original decoder numbers its up blocks from the lowest
resolution ({up}), its mid resnets from 1 ({mid})."""


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the LDM layout (no prefix)."""
    ups = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        for pattern, template in VAE_RULES:
            if m := re.fullmatch(pattern, new):
                g = m.groups()
                new = template.format(*g, up=ups - 1 - int(g[0]) if g[0].isdigit() else 0,
                                      mid=int(g[1]) + 1 if g[1].isdigit() else 0, attn=VAE_ATTENTION.get(g[1]))
                if ".attn_1." in new and value.dim() == 2:  # the original attention uses 1x1 convolutions
                    value = value[:, :, None, None]
                break
        out[new] = value
    return out


def _text_model(key: str) -> str:
    """transformers 5's CLIPTextModel drops the text_model level; the original files keep it."""
    return key if key.startswith(("text_model.", "text_projection")) else "text_model." + key


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model under the HF-CLIP prefix of the original files."""
    return {prefix + _text_model(k): v for k, v in state.items() if not k.endswith("position_ids")}


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection in the OpenCLIP layout (SDXL's second encoder)."""
    state = {_text_model(k): v for k, v in state.items() if not k.endswith("position_ids")}
    out = {prefix + "text_projection": state.pop("text_projection.weight").T.contiguous()}
    fixed = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.final_layer_norm.weight": "ln_final.weight",
             "text_model.final_layer_norm.bias": "ln_final.bias"}
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for key, value in state.items():
        if key in fixed:
            out[prefix + fixed[key]] = value
            continue
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        assert m, key
        block = f"{prefix}transformer.resblocks.{m[1]}."
        if m[2] in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            if m[2] == "self_attn.q_proj":  # q, k and v are one in_proj in OpenCLIP
                parts = [state[f"text_model.encoder.layers.{m[1]}.self_attn.{p}_proj.{m[3]}"] for p in "qkv"]
                out[f"{block}attn.in_proj_{m[3]}"] = torch.cat(parts)
            continue
        out[f"{block}{names[m[2]]}.{m[3]}"] = value
    return out


def sd_checkpoint(unet: torch.nn.Module, vae: torch.nn.Module, encoders: list[torch.nn.Module],
                  ) -> dict[str, torch.Tensor]:
    """The state dict of an original-layout SD1.x (one text encoder) or SDXL (two) checkpoint."""
    names = ldm_unet_names(unet)
    state = {f"model.diffusion_model.{names[k]}": v for k, v in unet.state_dict().items()}
    state |= {f"first_stage_model.{k}": v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()}
    if len(encoders) == 2:
        state |= clip_to_ldm(encoders[0].state_dict(), "conditioner.embedders.0.transformer.")
        state |= open_clip_to_ldm(encoders[1].state_dict(), "conditioner.embedders.1.model.")
    else:
        state |= clip_to_ldm(encoders[0].state_dict(), "cond_stage_model.transformer.")
    return state


def write_sd_checkpoint(folder: Path, target: Path) -> Path:
    """An SD1.5 or SDXL diffusers folder as one original-layout .safetensors file (SDXL when it has text_encoder_2)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    encoders = [CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")]
    if (folder / "text_encoder_2").is_dir():
        encoders.append(CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2"))
    state = sd_checkpoint(UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
                          AutoencoderKL.from_pretrained(folder, subfolder="vae"), encoders)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, target)
    return target


def write_flux_transformer(folder: Path, target: Path) -> Path:
    """The transformer of a Flux diffusers folder as one BFL-layout .safetensors file."""
    config = _config(folder / "transformer")
    state = bfl_flux_checkpoint(_weights(folder / "transformer"), config["num_layers"], config["num_single_layers"])
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, target)
    return target

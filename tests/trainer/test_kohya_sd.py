"""SD1.5 and SDXL kohya files: every key lands, by ComfyUI's rules (`kohya_rules`), on a module of the
original LDM / SGM UNet or of the CLIP text encoders, with the module's shape and the trained delta;
diffusers' loader reads the file back to the trained text encoders' and UNet's outputs."""

from __future__ import annotations

import pytest
import torch
from kohya_rules import check_layer_fits, comfy_clip_key_map, layers_of, ldm_unet_names, plain_and_merged, train_kohya

pytestmark = pytest.mark.trainer

RUNS = {
    # LoCon on SD1.5 adds the convolution layers (resnets, down / upsamplers) to the linear ones.
    "sd15": {"type": "locon", "network": {"dim": 4, "alpha": 2, "convDim": 2, "convAlpha": 1}},
    "sdxl": {},
}
KNOWN = {  # one layer per kind, by hand from the LDM UNet (openaimodel.py) of each tiny model
    "sd15": {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
             "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
             "lora_unet_down_blocks_0_resnets_0_conv1": "input_blocks.1.0.in_layers.2",
             "lora_unet_down_blocks_0_downsamplers_0_conv": "input_blocks.2.0.op",
             "lora_unet_up_blocks_0_upsamplers_0_conv": "output_blocks.1.1.conv",
             "lora_unet_up_blocks_1_attentions_1_proj_out": "output_blocks.3.1.proj_out",
             "lora_unet_mid_block_resnets_1_conv2": "middle_block.2.out_layers.3"},
    "sdxl": {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k":
             "input_blocks.3.1.transformer_blocks.0.attn2.to_k",
             "lora_unet_mid_block_attentions_0_proj_in": "middle_block.1.proj_in",
             "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_0_proj":
             "output_blocks.1.1.transformer_blocks.0.ff.net.0.proj"},
}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_kohya_keys_land_on_the_original_unet_and_clip_modules(family, tmp_path, tiny_models, dataset_dir):
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    recipe, kohya, _ = train_kohya(tmp_path, family, tiny_models(family), dataset_dir, **RUNS[family])
    unet, encoders = recipe.parts.denoiser, recipe.parts.text_encoders
    plain, merged = plain_and_merged(unet)
    ldm = ldm_unet_names(unet)
    # The test's LDM names are the ones diffusers' single-file loader reads back to this UNet, tensor for tensor.
    converted = convert_ldm_unet_checkpoint({LDM_UNET_KEY + ldm[k]: v for k, v in plain.items()}, dict(unet.config))
    assert converted.keys() == plain.keys() and all(torch.equal(converted[k], plain[k]) for k in plain)

    # ComfyUI: lora_unet_ + the diffusers module path -> the original module (comfy/utils.py unet_to_diffusers).
    unet_map = {"lora_unet_" + k[: -len(".weight")].replace(".", "_"): k for k in plain if k.endswith(".weight")}
    prefixes = {"sd15": {"clip_l": "lora_te"}, "sdxl": {"clip_l": "lora_te1", "clip_g": "lora_te2"}}[family]
    clip_map = comfy_clip_key_map(dict(zip(prefixes, encoders, strict=False)))
    layers = layers_of(kohya)
    assert {n.split("_text_model")[0] for n in layers if "_text_model" in n} == set(prefixes.values())
    for name, expected in KNOWN[family].items():
        assert ldm[unet_map[name]] == expected + ".weight"
    unet_layers = 0
    for name, parts in layers.items():
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        delta = parts["alpha"].item() / down.shape[0] * (up.flatten(1) @ down.flatten(1))
        if name in unet_map:
            weight = unet_map[name]
            unet_layers += 1
            check_layer_fits(name, parts, tuple(plain[weight].shape))
            torch.testing.assert_close(delta.reshape(plain[weight].shape), merged[weight] - plain[weight],
                                       rtol=0, atol=1e-6)
        else:
            assert name in clip_map, f"{name}: maps onto no module of the UNet or the text encoders"
            module = clip_map[name][1]
            check_layer_fits(name, parts, tuple(module.base_layer.weight.shape))
            torch.testing.assert_close(delta, module.get_delta_weight("default"), rtol=0, atol=1e-6)
    if family == "sd15":
        assert any(parts["lora_down.weight"].ndim == 4 for parts in layers.values())
    assert unet_layers == sum(1 for k in merged if not torch.equal(merged[k], plain[k]))

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_models(family))
    pipe.load_lora_weights(str(recipe.outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors"))
    ids = recipe.parts.tokenizers[0](["tkxw, a square"], padding="max_length", return_tensors="pt").input_ids
    loaded = [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)][: len(encoders)]
    with torch.no_grad():
        for trained, other in zip(encoders, loaded, strict=True):
            torch.testing.assert_close(other(ids).last_hidden_state, trained(ids).last_hidden_state)
        if family == "sd15":  # SDXL's UNet (added conditioning) is compared in test_end_to_end
            args = (torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, 32))
            torch.testing.assert_close(pipe.unet(*args).sample, unet(*args).sample)

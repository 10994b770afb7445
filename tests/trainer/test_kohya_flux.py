"""The Flux.1 kohya file in sd-scripts' BFL names: every key lands on a module of the original Flux model
by ComfyUI's and InvokeAI's rules (`kohya_rules`), the fused qkv / linear1 LoRAs add exactly what the
trained adapter adds, and diffusers' own loader reads the file back to the adapter's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kohya_rules import (
    bfl_flux_checkpoint,
    check_diffusers_reads,
    check_layer_fits,
    comfy_clip_key_map,
    comfy_model_key_map,
    invoke_flux_detects,
    invoke_flux_module,
    layers_of,
    merge,
    plain_and_merged,
    train_kohya,
)

pytestmark = pytest.mark.trainer

FLUX1_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                 axes_dims_rope=(16, 56, 56))
DOUBLE = ["img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2", "img_mod_lin",
          "txt_attn_qkv", "txt_attn_proj", "txt_mlp_0", "txt_mlp_2", "txt_mod_lin"]
SINGLE = ["linear1", "linear2", "modulation_lin"]


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory, tiny_models, dataset_dir):
    """A tiny Flux run (dim 4, alpha 4, CLIP-L trained): (recipe, kohya state dict, metadata)."""
    return train_kohya(tmp_path_factory.mktemp("flux"), "flux", tiny_models("flux"), dataset_dir)


def test_the_tests_bfl_layout_is_the_one_diffusers_reads_from_original_flux_checkpoints():
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    with torch.device("meta"):  # the full Flux.1-dev shapes, no memory
        model = FluxTransformer2DModel(**FLUX1_DEV)
    bfl = bfl_flux_checkpoint(model.state_dict(), 19, 38)
    # The shapes sd-scripts' convert_flux_lora.py lists for Flux.1.
    assert bfl["double_blocks.18.img_attn.qkv.weight"].shape == (9216, 3072)
    assert bfl["double_blocks.0.txt_mod.lin.weight"].shape == (18432, 3072)
    assert bfl["single_blocks.37.linear1.weight"].shape == (21504, 3072)
    assert bfl["single_blocks.0.linear2.weight"].shape == (3072, 15360)
    assert bfl["single_blocks.0.modulation.lin.weight"].shape == (9216, 3072)
    check_diffusers_reads(bfl, convert_flux_transformer_checkpoint_to_diffusers, model)


def test_flux_kohya_keys_are_bfl_block_layers_that_comfyui_and_invokeai_place_on_the_original_model(flux_run):
    recipe, kohya, _ = flux_run
    transformer, clip = recipe.parts.denoiser, recipe.parts.text_encoders[0]
    config = transformer.config
    plain, merged = plain_and_merged(transformer)
    bfl = bfl_flux_checkpoint(plain, config.num_layers, config.num_single_layers)
    unet_map = comfy_model_key_map({k: tuple(v.shape) for k, v in bfl.items()})
    clip_map = comfy_clip_key_map({"clip_l": clip})
    layers = layers_of(kohya)

    assert invoke_flux_detects(list(kohya)), "InvokeAI would not recognise the file as Flux kohya"
    unet_layers = {n for n in layers if n.startswith("lora_unet_")}
    assert unet_layers == {f"lora_unet_double_blocks_0_{n}" for n in DOUBLE} | {f"lora_unet_single_blocks_0_{n}"
                                                                                 for n in SINGLE}
    for name, parts in layers.items():
        if name in unet_map:
            module = unet_map[name]
            assert invoke_flux_module(name) + ".weight" == module
            check_layer_fits(name, parts, tuple(bfl[module].shape))
        else:
            assert name in clip_map, f"{name}: maps onto no module of the Flux model or its CLIP-L"
            check_layer_fits(name, parts, tuple(clip_map[name][1].base_layer.weight.shape))

    hidden = config.num_attention_heads * config.attention_head_dim
    assert layers["lora_unet_double_blocks_0_img_attn_qkv"]["lora_up.weight"].shape == (3 * hidden, 12)
    assert layers["lora_unet_single_blocks_0_linear1"]["lora_up.weight"].shape == (7 * hidden, 16)
    # alpha / rank stays the trained 4 / 4 when q, k, v (and the MLP) are fused into one layer of rank 12 (16).
    assert layers["lora_unet_double_blocks_0_txt_attn_qkv"]["alpha"].item() == 12.0
    assert layers["lora_unet_single_blocks_0_linear1"]["alpha"].item() == 16.0
    assert layers["lora_unet_double_blocks_0_img_mod_lin"]["alpha"].item() == 4.0

    # Added to the original weights as ComfyUI / InvokeAI add them, the file changes each BFL weight by
    # exactly what the trained adapter changes in its diffusers modules.
    expected = bfl_flux_checkpoint(merged, config.num_layers, config.num_single_layers)
    got = merge(bfl, {n: p for n, p in layers.items() if n in unet_map}, unet_map)
    assert sum(not torch.equal(got[k], bfl[k]) for k in bfl) == len(unet_layers)
    for key in bfl:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
    for name, parts in layers.items():
        if name in clip_map:
            down, up = parts["lora_down.weight"], parts["lora_up.weight"]
            delta = parts["alpha"].item() / down.shape[0] * up @ down
            torch.testing.assert_close(delta, clip_map[name][1].get_delta_weight("default"), rtol=0, atol=1e-6)


def test_flux_kohya_file_loads_in_diffusers_with_the_trained_adapters_outputs(tmp_path, tiny_models):
    """diffusers' sd-scripts converter splits linear1 at Flux.1's widths (3072 / 12288), so the
    transformer here has Flux.1's width with one block of each kind; the rest is the tiny model."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from conftest import base_spec
    from lora_operator.api import CheckpointFormat, resolve_spec
    from lora_trainer.adapters import make_adapter
    from lora_trainer.families import get_family

    family = get_family("flux")
    parts = family.load(tiny_models("flux"), torch.float32)
    torch.manual_seed(0)
    parts.denoiser = FluxTransformer2DModel(**{**FLUX1_DEV, "num_layers": 1, "num_single_layers": 1, "in_channels": 16,
                                               "joint_attention_dim": 32, "pooled_projection_dim": 32})
    transformer, clip = parts.denoiser, parts.text_encoders[0]

    # The test's BFL layout, value for value, is what diffusers' single-file loader reads at this width.
    original = transformer.state_dict()  # the live weights: the conversion copies what it changes
    converted = convert_flux_transformer_checkpoint_to_diffusers(bfl_flux_checkpoint(original, 1, 1))
    assert converted.keys() == original.keys() and all(torch.equal(converted[k], original[k]) for k in original)
    del converted, original

    spec = resolve_spec(base_spec("flux", tiny_models("flux"), tmp_path, tmp_path / "out",
                                  network={"dim": 4, "alpha": 8},
                                  training={"textEncoderLearningRate": 1e-2, "textEncoderRatio": 1.0}))
    adapter = make_adapter("lora")
    adapter.attach(family, parts, spec)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in [*transformer.named_parameters(), *clip.named_parameters()]:
            if "lora_B" in name:  # a trained adapter: B is no longer zero
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)

    def outputs():
        inputs = torch.Generator().manual_seed(2)
        ids = parts.tokenizers[0](["tkxw, a square"], padding="max_length", return_tensors="pt").input_ids
        with torch.no_grad():
            image = transformer(hidden_states=torch.randn(1, 16, 16, generator=inputs), timestep=torch.tensor([0.5]),
                                guidance=torch.tensor([1.0]), pooled_projections=torch.randn(1, 32, generator=inputs),
                                encoder_hidden_states=torch.randn(1, 8, 32, generator=inputs),
                                txt_ids=torch.zeros(8, 3), img_ids=torch.zeros(16, 3), return_dict=False)[0]
            return image.numpy(), clip(ids).pooler_output.numpy()

    trained = outputs()
    written = adapter.export(tmp_path / "ckpt", [CheckpointFormat.KOHYA], {"resolution": "32x32"})
    transformer.delete_adapters("default")
    clip.delete_adapter("default")
    base = outputs()
    assert np.abs(trained[0] - base[0]).max() > 1e-3 and np.abs(trained[1] - base[1]).max() > 1e-3

    pipe = FluxPipeline(scheduler=parts.noise_scheduler, vae=parts.vae, text_encoder=clip,
                        tokenizer=parts.tokenizers[0], text_encoder_2=parts.text_encoders[1],
                        tokenizer_2=parts.tokenizers[1], transformer=transformer)
    pipe.load_lora_weights(str(dict(written)["kohya"]), adapter_name="kohya")
    loaded = outputs()
    np.testing.assert_allclose(loaded[0], trained[0], rtol=0, atol=2e-5)
    np.testing.assert_allclose(loaded[1], trained[1], rtol=0, atol=2e-5)

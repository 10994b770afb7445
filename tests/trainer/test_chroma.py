"""Chroma: a tiny run trains and previews with ChromaPipeline; its diffusers file loads with load_lora_weights and
changes the image; its ComfyUI file's keys are the original (BFL) modules under diffusion_model. and, added to
those weights, change each one by exactly what the trained adapter changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kohya_rules import bfl_flux_checkpoint, check_diffusers_reads, check_layer_fits, plain_and_merged

pytestmark = pytest.mark.trainer

CHROMA1_HD = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=4096, axes_dims_rope=(16, 56, 56),
                  approximator_num_channels=64, approximator_hidden_dim=5120, approximator_layers=5)
"""ChromaTransformer2DModel's defaults, the shapes of lodestones/Chroma1-HD."""
SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")


@pytest.fixture(scope="module")
def chroma_run(tmp_path_factory, tiny_models, dataset_dir):
    """A tiny Chroma run with a preview at its end: (recipe, output prefix)."""
    from conftest import base_spec, run_recipe_for

    tmp = tmp_path_factory.mktemp("chroma")
    spec = base_spec("chroma", tiny_models("chroma"), dataset_dir, tmp / "out", previews={"everyEpochs": 1},
                     network={"dim": 4, "alpha": 8})
    return run_recipe_for(tmp, spec), tmp / "out"


def comfy_layers(path) -> dict[str, dict[str, torch.Tensor]]:
    """{layer: {suffix: tensor}} of a one-file LoRA whose layer names contain dots."""
    from safetensors.torch import load_file

    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path)).items():
        suffix = next(s for s in SUFFIXES if key.endswith("." + s))
        layers.setdefault(key[: -len(suffix) - 1], {})[suffix] = value
    return layers


def test_chroma_trains_and_previews_with_its_pipeline(chroma_run):
    recipe, out = chroma_run
    assert type(recipe.family.pipeline(recipe.parts)).__name__ == "ChromaPipeline"
    doc = recipe.manifest.manifest
    assert [c.format for c in doc.checkpoints] == ["kohya", "diffusers"]
    assert doc.previews and all((out / p).is_file() for e in doc.previews for p in e.paths)
    assert recipe.last_loss is not None and np.isfinite(recipe.last_loss)
    # T5 stays frozen whatever textEncoderLearningRate says (the default is above 0).
    assert set(recipe.adapter.modules) == {"transformer"}


def test_the_tests_bfl_layout_is_the_one_diffusers_reads_from_original_chroma_checkpoints():
    from diffusers import ChromaTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_chroma_transformer_checkpoint_to_diffusers

    with torch.device("meta"):
        model = ChromaTransformer2DModel(**CHROMA1_HD)
    bfl = bfl_flux_checkpoint(model.state_dict(), 19, 38)
    assert bfl["double_blocks.0.img_attn.qkv.weight"].shape == (9216, 3072)
    assert bfl["single_blocks.37.linear1.weight"].shape == (21504, 3072)
    assert not any(".mod" in k or "modulation" in k for k in bfl)  # Chroma has no per-block modulation
    check_diffusers_reads(bfl, convert_chroma_transformer_checkpoint_to_diffusers, model)


def test_every_comfyui_key_lands_on_an_original_chroma_module_with_the_trained_change(chroma_run):
    recipe, _ = chroma_run
    transformer = recipe.parts.denoiser
    config = transformer.config
    plain, merged = plain_and_merged(transformer)
    bfl = bfl_flux_checkpoint(plain, config.num_layers, config.num_single_layers)
    # ComfyUI (comfy/lora.py model_lora_keys_unet): "diffusion_model.<path>" -> the weight "<path>.weight".
    key_map = {"diffusion_model." + k[: -len(".weight")]: k for k in bfl if k.endswith(".weight")}
    layers = comfy_layers(recipe.outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors")

    assert set(layers) == {f"diffusion_model.double_blocks.0.{n}" for n in (
        "img_attn.qkv", "img_attn.proj", "img_mlp.0", "img_mlp.2",
        "txt_attn.qkv", "txt_attn.proj", "txt_mlp.0", "txt_mlp.2")} | {
        "diffusion_model.single_blocks.0.linear1", "diffusion_model.single_blocks.0.linear2"}
    out = dict(bfl)
    for name, parts in layers.items():
        assert name in key_map, f"{name}: ComfyUI maps it onto no Chroma weight"
        check_layer_fits(name, parts, tuple(bfl[key_map[name]].shape))
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        out[key_map[name]] = out[key_map[name]] + parts["alpha"].item() / down.shape[0] * up @ down
    # Converted back to diffusers' modules, each weight moved by exactly the trained adapter's delta.
    expected = bfl_flux_checkpoint(merged, config.num_layers, config.num_single_layers)
    assert sum(not torch.equal(out[k], bfl[k]) for k in bfl) == len(layers)
    for key in bfl:
        torch.testing.assert_close(out[key], expected[key], rtol=0, atol=1e-6, msg=key)


def test_chroma_diffusers_file_loads_with_load_lora_weights_and_changes_the_image(chroma_run, tiny_models):
    from diffusers import ChromaPipeline

    recipe, _ = chroma_run
    folder = recipe.outputs.workdir / "checkpoints/epoch-0001/diffusers"

    def image(pipe):
        generator = torch.Generator().manual_seed(0)
        return np.asarray(pipe("tkxw, a square", num_inference_steps=2, height=32, width=32, generator=generator,
                               guidance_scale=1.0, max_sequence_length=32, output_type="np").images[0])

    pipe = ChromaPipeline.from_pretrained(tiny_models("chroma"))
    base = image(pipe)
    pipe.load_lora_weights(str(folder))
    loaded = pipe.transformer.state_dict()
    trained = {k: v for k, v in recipe.parts.denoiser.state_dict().items() if "lora_" in k}
    assert sum("lora_A" in k for k in loaded) == sum("lora_A" in k for k in trained) == 12 + 5  # both blocks
    assert np.abs(image(pipe) - base).max() > 1e-4
    for key, value in trained.items():
        torch.testing.assert_close(loaded[key.replace(".default.", ".default_0.")], value.to(torch.float32))

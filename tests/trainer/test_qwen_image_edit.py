"""Qwen-Image-Edit: edit pairs train a tiny model on CPU with the control tokens joined as
QwenImageEditPlusPipeline joins them and the text encoded per (instruction, control image) as the pipeline
encodes it, cached per draw and released; previews edit the held-out controls; the diffusers file loads in
QwenImageEditPlusPipeline and changes the edit; the ComfyUI file is Qwen-Image's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kohya_rules import check_layer_fits, comfy_generic_key_map, layers_of, merge, plain_and_merged
from PIL import ImageOps
from safetensors.torch import load_file
from test_data_pairs import assert_loaded_the_trained_lora, assert_previews_edit_the_held_out_controls, pair_folder

from conftest import base_spec, run_recipe_for

pytestmark = pytest.mark.trainer

FAMILY = "qwen-image-edit"


@pytest.fixture(scope="module")
def edit_run(tmp_path_factory, tiny_models):
    """A tiny Qwen-Image-Edit run on two pairs (one held out), flips on, previews on: the recipe."""
    tmp = tmp_path_factory.mktemp("qwen-edit")
    data = pair_folder(tmp / "pairs")
    spec = base_spec(FAMILY, tiny_models(FAMILY), data, tmp / "out",
                     dataset={"pairs": True, "validationSplit": 0.5, "flip": True},
                     previews={"everyEpochs": 1, "prompts": [], "steps": 2, "imagesPerPrompt": 1, "guidance": 2.0})
    return run_recipe_for(tmp, spec)


def test_pairs_train_with_the_text_cached_per_control_and_the_encoder_released(edit_run):
    recipe = edit_run
    doc = recipe.manifest.manifest
    assert recipe.data.pairs and [c.format for c in doc.checkpoints] == ["kohya", "diffusers"]
    assert recipe.last_loss is not None and np.isfinite(recipe.last_loss)
    assert recipe.encoder.released and recipe.encoder._controls
    # Every (instruction, control) a step or the validation can draw was encoded before the release: each
    # training pair flipped and not, and the held-out pair.
    entries = set(recipe.encoder._text)
    train = {(i, f) for i in range(len(recipe.samples)) for f in (False, True)}
    assert {key for _, key in entries} == train | {("validation", 0)}
    # The text reads the control: the same instruction with the mirrored control encodes differently.
    caption = next(c for c, key in entries if key == (0, False))
    plain, mirrored = recipe.encoder._text[(caption, (0, False))], recipe.encoder._text[(caption, (0, True))]
    assert (plain["prompt_embeds"] - mirrored["prompt_embeds"]).abs().max() > 1e-5


def test_text_is_the_pipelines_encoding_of_the_instruction_and_the_control(edit_run, tiny_models):
    from diffusers import QwenImageEditPlusPipeline
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import CONDITION_IMAGE_SIZE, calculate_dimensions

    recipe = edit_run
    pipe = QwenImageEditPlusPipeline.from_pretrained(tiny_models(FAMILY))
    control = ImageOps.mirror(recipe.samples[0].decoded_control())
    width, height = calculate_dimensions(CONDITION_IMAGE_SIZE, control.width / control.height)[:2]
    embeds, _ = pipe.encode_prompt(prompt=["make it red"], image=[pipe.image_processor.resize(control, height, width)],
                                   device=torch.device("cpu"))
    ours = recipe.family.encode_prompts(recipe.parts, ["make it red"], controls=[control])
    torch.testing.assert_close(ours["prompt_embeds"], embeds, rtol=0, atol=1e-6)
    assert ours["prompt_embeds"].shape[1] > recipe.family.encode_prompts(recipe.parts, ["make it red"])[
        "prompt_embeds"].shape[1]  # the image's tokens are in the prompt


def test_control_tokens_are_the_ones_qwen_image_edit_plus_pipeline_joins(tiny_models):
    from diffusers import QwenImageEditPlusPipeline

    from lora_trainer.families import get_family
    from lora_trainer.families.flux import pack

    family = get_family(FAMILY)
    pipe = QwenImageEditPlusPipeline.from_pretrained(tiny_models(FAMILY))
    control = torch.randn(1, 16, 1, 4, 6, generator=torch.Generator().manual_seed(0))
    noisy = torch.randn(1, 16, 1, 4, 6, generator=torch.Generator().manual_seed(1))
    height, width = 4 * pipe.vae_scale_factor, 6 * pipe.vae_scale_factor  # pixels of a 4 x 6 latent
    latents, image_latents = pipe.prepare_latents(
        [control], 1, 16, height, width, torch.float32, torch.device("cpu"), None, latents=pack(noisy[:, :, 0]))
    tokens = family.join_control(pack(noisy[:, :, 0]), control)
    torch.testing.assert_close(tokens, torch.cat([latents, image_latents], dim=1), rtol=0, atol=0)


def test_previews_edit_the_held_out_control_images(edit_run):
    assert_previews_edit_the_held_out_controls(edit_run, guidance=1.0)


def test_the_diffusers_file_loads_in_qwen_image_edit_plus_pipeline_and_changes_the_edit(edit_run, tiny_models):
    from diffusers import QwenImageEditPlusPipeline

    recipe = edit_run
    control = recipe.data.train[0].decoded_control()

    def edit(pipe):
        return pipe(prompt="make the box red", image=control, height=32, width=32, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    pipe = QwenImageEditPlusPipeline.from_pretrained(tiny_models(FAMILY))
    base = edit(pipe)
    pipe.load_lora_weights(str(recipe.outputs.workdir / "checkpoints/epoch-0001/diffusers"))
    assert_loaded_the_trained_lora(pipe, recipe)
    assert np.abs(edit(pipe) - base).max() > 1e-4


def test_every_comfyui_key_is_qwen_images_and_adds_the_trained_deltas(edit_run):
    recipe = edit_run
    layers = layers_of(load_file(str(recipe.outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors")))
    plain, merged = plain_and_merged(recipe.parts.denoiser)
    key_map = comfy_generic_key_map({k: tuple(v.shape) for k, v in plain.items()})
    assert layers and all(name.startswith("diffusion_model.transformer_blocks.") for name in layers)
    for name, parts in layers.items():
        assert name in key_map, f"{name}: ComfyUI maps it onto no module"
        check_layer_fits(name, parts, tuple(plain[key_map[name]].shape))
    got = merge(plain, layers, key_map)
    for key in merged:
        torch.testing.assert_close(got[key], merged[key], rtol=0, atol=1e-6, msg=key)

"""Flux.2 dev and Flux.2 Klein: training on the tiny models with the text encoder cached and released, previews
from the cached conditioning, the diffusers file in load_lora_weights, the kohya (BFL) file on the original
Flux.2 layout as diffusers' converters and ComfyUI's key rule read it, the resolution-dependent shift, and the
refusal of a step-distilled Klein."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from kohya_rules import bfl_flux2_checkpoint, check_layer_fits, comfy_model_key_map, layers_of, merge, plain_and_merged

pytestmark = pytest.mark.trainer

FAMILIES = ["flux2", "flux2-klein"]
FLUX2_DEV = dict(patch_size=1, in_channels=128, num_layers=8, num_single_layers=48, attention_head_dim=128,
                 num_attention_heads=48, joint_attention_dim=15360, timestep_guidance_channels=256, mlp_ratio=3.0,
                 axes_dims_rope=(32, 32, 32, 32), guidance_embeds=True)
DOUBLE = ["img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2", "txt_attn_qkv", "txt_attn_proj",
          "txt_mlp_0", "txt_mlp_2"]
SINGLE = ["linear1", "linear2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_models, dataset_dir):
    """One tiny run per family (2 steps, previews at the end, kohya + diffusers): {family: (recipe, calls)}."""
    from conftest import base_spec, run_recipe_for

    out = {}
    for family in FAMILIES:
        tmp = tmp_path_factory.mktemp(family)
        calls = []

        def spy(recipe, calls=calls):
            original = recipe.family.encode_prompts
            recipe.family.encode_prompts = lambda parts, prompts: calls.append(prompts) or original(parts, prompts)

        spec = base_spec(family, tiny_models(family), dataset_dir, tmp / "out",
                         training={"textEncoderLearningRate": 1e-3},  # ignored: the LLM encoder stays frozen
                         previews={"everyEpochs": 1})
        out[family] = (run_recipe_for(tmp, spec, after_setup=spy), calls)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_training_encodes_each_text_once_then_releases_the_encoder_and_previews_from_the_cache(runs, family):
    recipe, calls_after_setup = runs[family]
    assert recipe.encoder.released
    assert calls_after_setup == []  # neither the steps nor the previews encoded a prompt again
    assert set(recipe.encoder._text) >= {"tkxw, a square, color 0, simple", "tkxw, a square", ""}
    assert all(v.device.type == "cpu" for e in recipe.encoder._text.values() for v in e.values())
    manifest = recipe.manifest.manifest
    assert len(manifest.previews) == 1 and manifest.previews[0].prompt == "tkxw, a square"
    assert (recipe.outputs.workdir / manifest.previews[0].paths[0]).is_file()
    assert {c.format for c in manifest.checkpoints} == {"kohya", "diffusers"}
    # textEncoderLearningRate was set, but the family trains no text encoder: no text LoRA anywhere.
    assert set(recipe.adapter.modules) == {"transformer"}


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_file_loads_in_the_pipeline_and_changes_the_image(runs, family, tiny_models):
    import diffusers

    from lora_trainer.families import get_family

    recipe, _ = runs[family]
    pipe = getattr(diffusers, get_family(family).pipeline_name).from_pretrained(tiny_models(family))

    def image():
        return pipe(prompt="tkxw, a square", num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    base = image()
    folder = recipe.outputs.workdir / "checkpoints/epoch-0001/diffusers"
    with warnings.catch_warnings():  # peft warns when the file's config names a module its keys do not
        warnings.simplefilter("error", RuntimeWarning)
        pipe.load_lora_weights(str(folder), adapter_name="diffusers")
    with_diffusers = image()
    assert np.abs(with_diffusers - base).max() > 1e-4
    pipe.delete_adapters("diffusers")
    pipe.load_lora_weights(str(recipe.outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors"),
                           adapter_name="kohya")
    # diffusers' own kohya Flux.2 converter splits the fused qkv back: the same image as the PEFT file.
    np.testing.assert_allclose(image(), with_diffusers, rtol=0, atol=1e-5)


def test_the_tests_flux2_bfl_layout_is_the_one_diffusers_reads_from_original_checkpoints():
    from diffusers import Flux2Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    with torch.device("meta"):  # the full FLUX.2-dev shapes, no memory
        model = Flux2Transformer2DModel(**FLUX2_DEV)
    bfl = bfl_flux2_checkpoint(model.state_dict(), 8, 48)
    assert bfl["double_blocks.7.img_attn.qkv.weight"].shape == (3 * 6144, 6144)
    assert bfl["single_blocks.47.linear1.weight"].shape == (3 * 6144 + 2 * 18432, 6144)
    left = dict(bfl)
    converted = convert_flux2_transformer_checkpoint_to_diffusers(left)
    assert not left
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape)
                                                                 for k, v in model.state_dict().items()}
    params = sum(p.numel() for p in model.parameters())
    assert 31.5e9 < params < 32.5e9, params  # the FLUX.2-dev model card: a 32B-parameter transformer


@pytest.mark.parametrize("family", FAMILIES)
def test_kohya_keys_land_on_the_bfl_modules_comfyui_loads_and_unfuse_to_the_trained_update(runs, family):
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
    from safetensors.torch import load_file

    recipe, _ = runs[family]
    kohya = load_file(recipe.outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors")
    transformer = recipe.parts.denoiser
    config = transformer.config
    plain, merged = plain_and_merged(transformer)
    bfl = bfl_flux2_checkpoint(plain, config.num_layers, config.num_single_layers)
    # ComfyUI (comfy/lora.py model_lora_keys_unet): lora_unet_ + the diffusion model's weight path, dots as _.
    unet_map = comfy_model_key_map({k: tuple(v.shape) for k, v in bfl.items()})
    layers = layers_of(kohya)
    assert set(layers) == {f"lora_unet_double_blocks_0_{n}" for n in DOUBLE} | {f"lora_unet_single_blocks_0_{n}"
                                                                                 for n in SINGLE}
    for name, parts in layers.items():
        check_layer_fits(name, parts, tuple(bfl[unet_map[name]].shape))
    assert layers["lora_unet_double_blocks_0_img_attn_qkv"]["lora_down.weight"].shape[0] == 12  # 3 x rank 4
    assert layers["lora_unet_double_blocks_0_img_attn_qkv"]["alpha"].item() == 12.0

    # Added to the BFL weights as ComfyUI adds them and converted back to diffusers' modules (unfused),
    # the file changes each weight by exactly what the trained adapter changes.
    got = convert_flux2_transformer_checkpoint_to_diffusers(merge(bfl, layers, unet_map))
    assert got.keys() == merged.keys()
    changed = [k for k in merged if not torch.equal(merged[k], plain[k])]
    assert len(changed) == 3 * 2 + 6 + 2  # q, k, v twice, 6 other double-block layers, 2 single-block layers
    for key in merged:
        torch.testing.assert_close(got[key], merged[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_shift_is_the_pipelines_resolution_dependent_one(family, tiny_models):
    from lora_trainer.families import get_family
    from lora_trainer.families.flux2 import compute_mu

    f = get_family(family)
    parts = f.load(tiny_models(family), torch.float32)
    s = torch.linspace(0.05, 0.95, 7)
    for h, w in ((128, 128), (96, 128), (64, 64)):  # latents of 1024x1024, 768x1024 and 512x512 images
        mu = compute_mu((h // 2) * (w // 2), 50)
        expected = parts.noise_scheduler.time_shift(mu, 1.0, s)  # what the pipeline's scheduler samples at
        torch.testing.assert_close(f.sigmas(s, (1, 32, h, w)), expected)
    assert f.shift_for((1, 32, 128, 128)) > f.shift_for((1, 32, 64, 64)) > 1.0
    latents, noise = torch.zeros(1, 32, 64, 64), torch.ones(1, 32, 64, 64)
    noisy, _ = f.noisy_and_target(parts, latents, noise, torch.tensor([0.5]))
    assert noisy.mean().item() == pytest.approx(f.shift_for(latents.shape) / (f.shift_for(latents.shape) + 1))


def test_a_step_distilled_klein_is_refused_with_the_base_to_use(tmp_path):
    from lora_trainer.errors import ModelError
    from lora_trainer.families import get_family
    from lora_trainer.families.flux2 import KLEIN_BASES, Flux2KleinFamily
    from tinymodels.flux2_klein import build

    build(tmp_path / "distilled", distilled=True)
    with pytest.raises(ModelError, match=r"step-distilled FLUX.2 Klein.*FLUX.2-klein-base-(4B|9B)"):
        get_family("flux2-klein").load(tmp_path / "distilled", torch.float32)

    class Klein9B:  # the 9B transformer's width names the 9B base
        config = type("C", (), {"num_attention_heads": 32, "attention_head_dim": 128})
    with pytest.raises(ModelError, match="FLUX.2-klein-base-9B"):
        Flux2KleinFamily().check_variant(tmp_path / "distilled", Klein9B())
    assert KLEIN_BASES[4096].endswith("base-9B")
    # A folder without the flag is known by BFL's repo name; the base's name passes.
    (tmp_path / "FLUX.2-klein-9B").mkdir()
    with pytest.raises(ModelError, match="FLUX.2-klein-base-9B"):
        Flux2KleinFamily().check_variant(tmp_path / "FLUX.2-klein-9B", Klein9B())
    (tmp_path / "FLUX.2-klein-base-9B").mkdir()
    Flux2KleinFamily().check_variant(tmp_path / "FLUX.2-klein-base-9B", Klein9B())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["locon", "embedding"])
def test_locon_and_embedding_are_refused_naming_the_type(family, kind, tiny_models, tmp_path):
    from conftest import base_spec
    from lora_operator.api import resolve_spec

    extra = {"embedding": {"token": "<tkxw>", "initialPhrase": "square"}} if kind == "embedding" else {}
    extra |= {"network": {"dim": 4, "alpha": 4, "convDim": 4}} if kind == "locon" else {}
    with pytest.raises(ValueError, match=rf"type.*{kind} is not available for family {family} \(it supports type: "
                                         r"lora\)"):
        resolve_spec(base_spec(family, tiny_models(family), tmp_path, tmp_path / "out", type=kind, **extra))


@pytest.mark.parametrize("family", FAMILIES)
def test_previews_from_cached_conditioning_equal_the_pipelines_own_encoding(family, tiny_models):
    """Klein's classifier-free guidance needs the cached empty prompt as its negative: a wrong one changes
    the image."""
    from lora_operator.api import Previews
    from lora_trainer.encode import Encoder
    from lora_trainer.families import get_family
    from lora_trainer.previews import generate

    f = get_family(family)
    parts = f.load(tiny_models(family), torch.float32)
    previews = Previews(steps=2, images_per_prompt=1)
    assert f.pipeline_kwargs(previews)["guidance_scale"] == 4.0  # unset: the pipelines' default, not 7
    assert f.pipeline_kwargs(Previews(guidance=7.0))["guidance_scale"] == 7.0
    # the pod reads the resolved spec, which spells every field out: unset must stay unset there
    spelled_out = Previews.model_validate(previews.model_dump(by_alias=True))
    assert f.pipeline_kwargs(spelled_out)["guidance_scale"] == 4.0
    own = generate(f, parts, previews, ["tkxw, a square"], (32, 32))
    encoder = Encoder(f, parts, torch.device("cpu"), cache_latents=False, cache_text=True)
    encoder.release_text(["tkxw, a square", ""])

    def cached(prompt):
        return f.prompt_kwargs(encoder.text([prompt], grad=False), encoder.text([""], grad=False))

    from_cache = generate(f, parts, previews, ["tkxw, a square"], (32, 32), conditioning=cached)
    np.testing.assert_array_equal(np.asarray(from_cache[0][0]), np.asarray(own[0][0]))
    if family == "flux2-klein":
        def wrong_negative(prompt):
            return f.prompt_kwargs(encoder.text([prompt], grad=False), encoder.text([prompt], grad=False))

        other = generate(f, parts, previews, ["tkxw, a square"], (32, 32), conditioning=wrong_negative)
        assert not np.array_equal(np.asarray(other[0][0]), np.asarray(own[0][0]))


def test_shuffled_captions_keep_the_text_encoder(tiny_models, dataset_dir, tmp_path):
    """Shuffled tags make new texts every step: nothing can be cached ahead, the encoder stays."""
    from conftest import base_spec, run_recipe_for

    spec = base_spec("flux2-klein", tiny_models("flux2-klein"), dataset_dir, tmp_path / "out",
                     training={"shuffleTags": True})
    recipe = run_recipe_for(tmp_path, spec, setup_only=True)
    assert not recipe.encoder.released and not recipe.encoder._text

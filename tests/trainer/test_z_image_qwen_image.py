"""Z-Image and Qwen-Image on their tiny models: a CPU run trains, previews and exports; the diffusers folder
loads with load_lora_weights and changes the image; every key of the ComfyUI file lands on a module of
ComfyUI's own model (`kohya_rules`) and, converted back, adds exactly the trained deltas; a Turbo
checkpoint, LoCon, embeddings and text-encoder LoRAs are refused by name; the sigma shift is the scheduler's."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from kohya_rules import (
    check_layer_fits,
    comfy_generic_key_map,
    layers_of,
    merge,
    plain_and_merged,
    z_image_comfy_checkpoint,
)
from safetensors.torch import load_file

from conftest import base_spec, run_recipe_for, write_dataset

pytestmark = pytest.mark.trainer

FAMILIES = ["z-image", "qwen-image"]
PIPELINES = {"z-image": "ZImagePipeline", "qwen-image": "QwenImagePipeline"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_models):
    """One tiny run per family (2 steps, both formats, previews at the end), captions of different lengths in
    batches of 2, text encoders released: {family: recipe}."""
    data = write_dataset(tmp_path_factory.mktemp("data") / "set", n=3)
    for i, caption in enumerate(["red", "a green square on a gradient, simple", "blue square"]):
        (data / f"img{i}.txt").write_text(caption)
    out = {}
    for family in FAMILIES:
        tmp = tmp_path_factory.mktemp(family)
        spec = base_spec(family, tiny_models(family), data, tmp / "out", training={"batchSize": 2},
                         previews={"everyEpochs": 1, "imagesPerPrompt": 1, "steps": 2, "guidance": 4.0})
        out[family] = run_recipe_for(tmp, spec)
    return out


def transformer_out(family: str, transformer, latents: torch.Tensor) -> np.ndarray:
    """The transformer's output on fixed inputs through the family's `predict`."""
    from lora_trainer.families import get_family

    gen = torch.Generator().manual_seed(3)
    cond = {"prompt_embeds": torch.randn(1, 6, 32, generator=gen), "prompt_embeds_mask": torch.ones(1, 6).long()}
    parts = type("Parts", (), {"denoiser": transformer})()
    with torch.no_grad():
        return get_family(family).predict(parts, latents, torch.tensor([0.6]), cond, []).numpy()


def latents_of(family: str) -> torch.Tensor:
    shape = (1, 16, 1, 8, 8) if family == "qwen-image" else (1, 16, 8, 8)
    return torch.randn(shape, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cpu_run_trains_previews_and_writes_both_formats_with_the_text_encoders_released(family, runs):
    recipe = runs[family]
    man = recipe.manifest.manifest
    assert {c.format for c in man.checkpoints} == {"kohya", "diffusers"}
    assert man.previews and (recipe.outputs.workdir / "previews/epoch-0001/p0-i0.png").exists()
    assert recipe.encoder.released and recipe.last_loss is not None and np.isfinite(recipe.last_loss)
    assert all(p.device.type == "cpu" for e in recipe.parts.text_encoders for p in e.parameters())
    trained = [n for n, p in recipe.parts.denoiser.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert trained, "no LoRA weight moved"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_diffusers_folder_loads_with_load_lora_weights_and_changes_the_image(family, runs, tiny_models):
    import diffusers

    recipe = runs[family]
    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(tiny_models(family))
    pipe.set_progress_bar_config(disable=True)

    def image():
        return np.asarray(pipe("a square", num_inference_steps=2, height=32, width=32,
                               generator=torch.Generator().manual_seed(0)).images[0], dtype=np.float32)

    before, base_out = image(), transformer_out(family, pipe.transformer, latents_of(family))
    pipe.load_lora_weights(str(recipe.outputs.workdir / "checkpoints/epoch-0001/diffusers"))
    after, loaded_out = image(), transformer_out(family, pipe.transformer, latents_of(family))
    assert np.abs(after - before).max() > 0, "the LoRA did not change the image"
    trained_out = transformer_out(family, recipe.parts.denoiser, latents_of(family))
    assert np.abs(trained_out - base_out).max() > 1e-4
    np.testing.assert_allclose(loaded_out, trained_out, rtol=0, atol=1e-5)


def comfy_layout(family: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformer's weights as ComfyUI's model names them (Qwen-Image: the diffusers names)."""
    return z_image_comfy_checkpoint(state) if family == "z-image" else dict(state)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_comfyui_key_lands_on_a_module_of_comfyuis_model_and_adds_the_trained_deltas(family, runs):
    recipe = runs[family]
    kohya = load_file(str(recipe.outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors"))
    layers = layers_of(kohya)
    plain, merged = plain_and_merged(recipe.parts.denoiser)
    native = comfy_layout(family, plain)
    key_map = comfy_generic_key_map({k: tuple(v.shape) for k, v in native.items()})
    assert all(name.startswith("diffusion_model.") for name in layers)
    for name, parts in layers.items():
        assert name in key_map, f"{name}: ComfyUI maps it onto no module"
        check_layer_fits(name, parts, tuple(native[key_map[name]].shape))
    adapted = {m for m in merged if not torch.equal(merged[m], plain[m])}
    got = merge(native, layers, key_map)
    if family == "z-image":
        from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

        assert layers[next(n for n in layers if n.endswith("attention.qkv"))]["alpha"].item() == 12.0  # 3 x 4
        back = convert_z_image_transformer_checkpoint_to_diffusers(dict(got))
    else:
        back = got
    assert back.keys() == merged.keys()
    # Every changed weight has its layer in the file (the last block's text-stream layers feed nothing, so
    # their LoRAs stay zero), and the file changes each weight by exactly the trained delta.
    native_merged = comfy_layout(family, merged)
    changed = {k for k in native if not torch.equal(native_merged[k], native[k])}
    assert adapted and changed <= {key_map[n] for n in layers}
    for key in merged:
        torch.testing.assert_close(back[key], merged[key], rtol=0, atol=1e-6, msg=key)


def test_the_comfy_z_image_layout_is_the_one_diffusers_reads_from_original_checkpoints(tiny_models):
    from diffusers import ZImageTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    state = ZImageTransformer2DModel.from_pretrained(tiny_models("z-image"), subfolder="transformer").state_dict()
    native = z_image_comfy_checkpoint(state)
    assert "layers.0.attention.qkv.weight" in native and "noise_refiner.0.attention.out.weight" in native
    back = convert_z_image_transformer_checkpoint_to_diffusers(dict(native))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_diffusers_reads_the_qwen_image_comfyui_file_to_the_trained_outputs(runs, tiny_models):
    from diffusers import QwenImagePipeline

    recipe = runs["qwen-image"]
    pipe = QwenImagePipeline.from_pretrained(tiny_models("qwen-image"))
    pipe.load_lora_weights(str(recipe.outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors"))
    np.testing.assert_allclose(transformer_out("qwen-image", pipe.transformer, latents_of("qwen-image")),
                               transformer_out("qwen-image", recipe.parts.denoiser, latents_of("qwen-image")),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("named", ["hf_cache_folder", "name_or_path"])
def test_a_distilled_z_image_folder_is_refused_naming_the_base_model(named, tmp_path, tiny_models, dataset_dir):
    """The trainer's check of the model folder (the URI itself names nothing: a link, a renamed copy)."""
    import json

    from lora_trainer.errors import ModelError

    folder = tmp_path / ("models--Tongyi-MAI--Z-Image-Turbo/snapshots/0123" if named == "hf_cache_folder" else "m")
    shutil.copytree(tiny_models("z-image"), folder)
    if named == "name_or_path":
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "_name_or_path": "Tongyi-MAI/Z-Image-Turbo"}))
    link = tmp_path / "model"
    link.symlink_to(folder)
    spec = base_spec("z-image", link, dataset_dir, tmp_path / "out")
    with pytest.raises(ModelError, match=r"baseModel.uri: .*Turbo.* train on the base model Tongyi-MAI/Z-Image"):
        run_recipe_for(tmp_path, spec, setup_only=True)


def test_a_distilled_z_image_uri_is_refused_before_the_job_starts(tmp_path):
    from lora_operator.api import SpecError, resolve_spec

    spec = base_spec("z-image", tmp_path, tmp_path, tmp_path / "out")
    spec["baseModel"]["uri"] = "s3://models/z_image_turbo_bf16.safetensors"
    with pytest.raises(SpecError, match=r"baseModel.uri.*Z-Image-Turbo.*Tongyi-MAI/Z-Image instead"):
        resolve_spec(spec)
    spec["baseModel"]["uri"] = "hf://Tongyi-MAI/Z-Image"
    assert resolve_spec(spec).base_model.family == "z-image"
    spec["baseModel"]["uri"] = "s3://turbo-lab/z-image/"  # "turbo" alone names no Z-Image-Turbo
    assert resolve_spec(spec).base_model.uri == "s3://turbo-lab/z-image/"
    spec["baseModel"] = {"family": "flux", "uri": "hf://someone/z-image-turbo-like"}  # only z-image has the rule
    assert resolve_spec(spec).base_model.family == "flux"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["locon", "embedding"])
def test_locon_and_embeddings_are_refused_naming_the_field(family, kind, tmp_path, tiny_models):
    from lora_operator.api import resolve_spec

    extra = ({"network": {"convDim": 4}} if kind == "locon" else
             {"embedding": {"token": "<tkxw>", "initialPhrase": "square"}})
    spec = base_spec(family, tiny_models(family), tmp_path, tmp_path / "out", type=kind, **extra)
    with pytest.raises(ValueError, match=rf"type[\s\S]*{kind} is not available for family {family} "
                                         r"\(it supports type: lora\)"):
        resolve_spec(spec)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_text_encoder_lora_is_refused_naming_the_field(family, tmp_path, tiny_models, dataset_dir):
    from lora_trainer.errors import ConfigError

    spec = base_spec(family, tiny_models(family), dataset_dir, tmp_path / "out",
                     training={"textEncoderLearningRate": 1e-4, "textEncoderRatio": 0.5})
    with pytest.raises(ConfigError, match="training.textEncoderLearningRate"):
        run_recipe_for(tmp_path, spec, setup_only=True)


def test_the_shift_is_the_schedulers_fixed_for_z_image_and_by_resolution_for_qwen_image(tiny_models):
    from lora_trainer.families import get_family
    from lora_trainer.families.flow import scheduler_shift

    z, q = get_family("z-image"), get_family("qwen-image")
    zparts, qparts = z.load(tiny_models("z-image"), torch.float32), q.load(tiny_models("qwen-image"), torch.float32)
    at_512, at_1024 = (1, 16, 1, 64, 64), (1, 16, 1, 128, 128)
    assert z.shift(zparts, at_512) == z.shift(zparts, at_1024) == 3.0
    # Qwen-Image at 1024 px: 4096 tokens, mu = 0.5 + 0.4 x 3840 / 7936, shift = e^mu ~ 2.0 (the pipeline's).
    assert q.shift(qparts, at_1024) == pytest.approx(2.0009, abs=1e-3)
    assert q.shift(qparts, at_512) < q.shift(qparts, at_1024)
    linear = {**qparts.noise_scheduler.config, "time_shift_type": "linear"}
    assert scheduler_shift(linear, at_1024) == pytest.approx(0.6935, abs=1e-3)
    gen = torch.Generator().manual_seed(0)
    low = q.sample_timesteps(qparts, torch.zeros(64, *at_512[1:]), gen)
    high = q.sample_timesteps(qparts, torch.zeros(64, *at_1024[1:]), torch.Generator().manual_seed(0))
    assert (high > low).all()  # the same draws, pushed toward noise at the larger size


def test_conditioning_of_different_lengths_joins_zero_padded():
    from lora_trainer.encode import join

    a, b = torch.ones(1, 3, 2), torch.ones(1, 5, 2)
    joined = join([a, b])
    assert joined.shape == (2, 5, 2) and joined[0, 3:].abs().sum() == 0 and joined[1].sum() == 10
    masks = join([torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool)])
    assert masks.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    pooled = join([torch.ones(1, 4), torch.ones(1, 4)])
    assert pooled.shape == (2, 4)


def test_after_setup_no_caption_reaches_the_text_encoder(tmp_path, tiny_models, dataset_dir):
    """Training and validation captions were all encoded at setup: a text encoder that fails on use
    afterwards does not stop the run."""
    def break_text_encoder(recipe):
        assert recipe.encoder.released
        recipe.parts.text_encoders[0].forward = lambda *a, **k: (_ for _ in ()).throw(AssertionError("encoded"))

    spec = base_spec("z-image", tiny_models("z-image"), dataset_dir, tmp_path / "out",
                     dataset={"validationSplit": 0.34}, training={"steps": 2})
    recipe = run_recipe_for(tmp_path, spec, after_setup=break_text_encoder)
    assert recipe.manifest.manifest.checkpoints[0].validation_loss is not None

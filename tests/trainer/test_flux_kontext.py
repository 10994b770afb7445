"""Flux Kontext: edit pairs train a tiny Kontext model on CPU with the control tokens joined as
FluxKontextPipeline joins them, previews edit the held-out control images, the files are Flux.1's, and a
family that trains no edits refuses a job with pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data_pairs import assert_loaded_the_trained_lora, assert_previews_edit_the_held_out_controls, pair_folder

from conftest import base_spec, run_recipe_for
from lora_operator.api import SpecError, resolve_spec

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def kontext_run(tmp_path_factory, tiny_models):
    """A tiny Kontext run on two pairs, previews on: the recipe."""
    tmp = tmp_path_factory.mktemp("kontext")
    data = pair_folder(tmp / "pairs")
    spec = base_spec("flux-kontext", tiny_models("flux-kontext"), data, tmp / "out",
                     dataset={"pairs": True, "validationSplit": 0.5, "flip": True},
                     previews={"everyEpochs": 1, "prompts": []})
    return run_recipe_for(tmp, spec)


def test_pairs_train_kontext_and_write_flux_files(kontext_run):
    recipe = kontext_run
    doc = recipe.manifest.manifest
    assert recipe.data.pairs and {s.key for s in recipe.data.train} == {"a.png", "b.jpg"}
    assert [c.format for c in doc.checkpoints] == ["kohya", "diffusers"]
    assert recipe.last_loss is not None and np.isfinite(recipe.last_loss)
    # Control latents are cached like the targets' (the keys a flip draws are among them).
    assert recipe.encoder._controls and set(recipe.encoder._controls) <= set(recipe.encoder._latents)
    from safetensors import safe_open

    with safe_open(str(recipe.outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors"), "pt") as fh:
        keys = set(fh.keys())  # noqa: SIM118 (no dict)
        assert fh.metadata()["ss_base_model_version"] == "flux1"
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys
    assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in keys


def test_control_tokens_and_ids_are_the_ones_flux_kontext_pipeline_builds(tiny_models):
    from diffusers import FluxKontextPipeline

    from lora_trainer.families import get_family
    from lora_trainer.families.flux import image_ids, pack

    family = get_family("flux-kontext")
    pipe = FluxKontextPipeline.from_pretrained(tiny_models("flux-kontext"))
    control = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    noisy = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(1))
    height, width = 4 * pipe.vae_scale_factor, 6 * pipe.vae_scale_factor  # pixels of a 4 x 6 latent
    latents, image_latents, latent_ids, control_ids = pipe.prepare_latents(
        control, 1, 16, height, width, torch.float32, torch.device("cpu"), latents=pack(noisy))
    tokens, ids = family.join_control(pack(noisy), image_ids(4, 6, noisy.device, noisy.dtype), control)
    torch.testing.assert_close(tokens, torch.cat([latents, image_latents], dim=1), rtol=0, atol=0)
    torch.testing.assert_close(ids, torch.cat([latent_ids, control_ids], dim=0), rtol=0, atol=0)


def test_previews_edit_the_held_out_control_images(kontext_run):
    assert_previews_edit_the_held_out_controls(kontext_run, guidance=2.5)


def test_kontext_diffusers_file_loads_in_flux_kontext_pipeline_and_changes_the_edit(kontext_run, tiny_models):
    from diffusers import FluxKontextPipeline

    recipe = kontext_run
    control = recipe.data.train[0].decoded_control()

    def edit(pipe):
        return np.asarray(pipe(prompt="make the box red", image=control, height=32, width=32, max_area=32 * 32,
                               _auto_resize=False, num_inference_steps=2, max_sequence_length=32,
                               generator=torch.Generator().manual_seed(0), output_type="np").images[0])

    pipe = FluxKontextPipeline.from_pretrained(tiny_models("flux-kontext"))
    base = edit(pipe)
    pipe.load_lora_weights(str(recipe.outputs.workdir / "checkpoints/epoch-0001/diffusers"))
    assert_loaded_the_trained_lora(pipe, recipe)
    assert np.abs(edit(pipe) - base).max() > 1e-4


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux", "chroma"])
def test_a_family_that_trains_no_edits_refuses_pairs_in_the_operator_and_the_apiserver(family, tmp_path):
    import yaml
    from test_family_conformance import JOB_CRD

    spec = base_spec(family, tmp_path, tmp_path, tmp_path / "out", dataset={"pairs": True})
    with pytest.raises(SpecError, match=rf"spec\.dataset\.pairs: family {family} cannot train on edit pairs; "
                                        r"use an edit family \(flux-kontext, flux2-klein, qwen-image-edit\)") as err:
        resolve_spec(spec)
    rules = yaml.safe_load(JOB_CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"]["x-kubernetes-validations"]
    crd = [r for r in rules if r.get("fieldPath") == ".dataset.pairs"]
    assert [r["message"] for r in crd if f"'{family}'" in r["rule"]] == [str(err.value).split(";")[0]]
    assert not any("'flux-kontext'" in r["rule"] for r in crd)  # the edit family's pairs pass


def test_pairs_and_class_images_are_refused_together(tmp_path):
    spec = base_spec("flux-kontext", tmp_path, tmp_path, tmp_path / "out",
                     dataset={"pairs": True, "regularization": {"uri": "s3://d/class/"}})
    with pytest.raises(SpecError, match="pairs and regularization cannot be combined"):
        resolve_spec(spec)

"""Flux.2 Klein edits: ``flux2-klein`` with edit pairs trains a tiny Klein on CPU with the control latents joined
as Flux2KleinPipeline joins a reference image, previews edit the held-out controls, and the diffusers file
loads in Flux2KleinPipeline and changes the edit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_pairs import pair_folder

from conftest import base_spec, run_recipe_for

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def klein_run(tmp_path_factory, tiny_models):
    """A tiny Klein run on two pairs, previews on: the recipe."""
    tmp = tmp_path_factory.mktemp("klein-edit")
    spec = base_spec("flux2-klein", tiny_models("flux2-klein"), pair_folder(tmp / "pairs"), tmp / "out",
                     dataset={"pairs": True, "validationSplit": 0.5},
                     previews={"everyEpochs": 1, "prompts": []})
    return run_recipe_for(tmp, spec)


def test_pairs_train_klein_and_write_its_files(klein_run):
    recipe = klein_run
    assert recipe.data.pairs and recipe.encoder._controls
    assert recipe.last_loss is not None and np.isfinite(recipe.last_loss)
    assert [c.format for c in recipe.manifest.manifest.checkpoints] == ["kohya", "diffusers"]
    assert recipe.manifest.manifest.previews  # rendered through the pipeline with the control as `image`


def test_reference_tokens_and_ids_are_the_ones_flux2_klein_pipeline_builds(tiny_models):
    from diffusers import Flux2KleinPipeline

    from lora_trainer.families import get_family

    family = get_family("flux2-klein")
    pipe = Flux2KleinPipeline.from_pretrained(tiny_models("flux2-klein"))
    control = torch.randn(2, 32, 4, 6, generator=torch.Generator().manual_seed(0))
    noisy = torch.randn(2, 32, 4, 6, generator=torch.Generator().manual_seed(1))
    patches = pipe._patchify_latents(noisy)
    tokens, ids = family.join_reference(pipe._pack_latents(patches), pipe._prepare_latent_ids(patches), control)
    # The pipeline's join for one reference: its packed patches and ids (time 10) after the noisy ones.
    reference = pipe._patchify_latents(control)
    want_ids = torch.cat([pipe._prepare_latent_ids(patches),
                          pipe._prepare_image_ids([reference[:1]]).repeat(2, 1, 1)], dim=1)
    torch.testing.assert_close(tokens, torch.cat([pipe._pack_latents(patches), pipe._pack_latents(reference)], 1))
    torch.testing.assert_close(ids, want_ids, rtol=0, atol=0)
    assert set(ids[:, -1, 0].tolist()) == {10}


def test_previews_edit_the_held_out_control_images(klein_run):
    from lora_operator.api import Previews
    from lora_trainer.previews import generate

    recipe = klein_run
    family, parts = recipe.family, recipe.parts
    parts.text_encoders[0].to("cpu")  # released after caching: the test encodes its own prompt
    previews = Previews(steps=2, images_per_prompt=1, guidance=2.0)
    black, white = Image.new("RGB", (32, 32)), Image.new("RGB", (32, 32), (255, 255, 255))
    first = generate(family, parts, previews, ["edit"], (32, 32), [black])[0][0]
    second = generate(family, parts, previews, ["edit"], (32, 32), [white])[0][0]
    assert np.abs(np.asarray(first, dtype=float) - np.asarray(second, dtype=float)).max() > 0


def test_klein_diffusers_file_loads_in_flux2_klein_pipeline_and_changes_the_edit(klein_run, tiny_models):
    from diffusers import Flux2KleinPipeline

    recipe = klein_run
    control = recipe.data.train[0].decoded_control()

    def edit(pipe):
        return np.asarray(pipe(prompt="make the box red", image=[control.resize((64, 64))], height=32, width=32,
                               num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                               output_type="np").images[0])

    pipe = Flux2KleinPipeline.from_pretrained(tiny_models("flux2-klein"), is_distilled=False)
    base = edit(pipe)
    pipe.load_lora_weights(str(recipe.outputs.workdir / "checkpoints/epoch-0001/diffusers"))
    loaded = pipe.transformer.state_dict()
    trained = {k: v for k, v in recipe.parts.denoiser.state_dict().items() if "lora_" in k}
    assert trained and sum("lora_A" in k for k in loaded) == sum("lora_A" in k for k in trained)
    assert np.abs(edit(pipe) - base).max() > 1e-4

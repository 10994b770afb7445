"""Base models as users have them: one .safetensors checkpoint in the original layout.

The checkpoints are the tiny test models written in the Stability (SD1.5, SDXL) and Black Forest Labs
(Flux transformer) layouts by `singlefile_convert`; diffusers' single-file loaders reading them back to
the very weights of the diffusers folder proves the converter, and training on them proves the trainer
loads them. The tiny architectures are not the standard ones, so the jobs name their diffusers folder as
``baseModel.config`` (configs, tokenizers, scheduler), as a job with a non-standard model would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from singlefile_convert import sd_checkpoint, write_flux_transformer, write_sd_checkpoint

from conftest import base_spec, run_recipe_for
from lora_trainer.errors import ModelError
from lora_trainer.singlefile import BUNDLED_CONFIGS, SingleFileModel, open_single_file

pytestmark = pytest.mark.trainer

SD_PARTS = {"sd15": ["unet", "vae", "text_encoder"], "sdxl": ["unet", "vae", "text_encoder", "text_encoder_2"]}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """{family: its tiny model as one original-layout file} (Flux: the transformer only)."""
    root = tmp_path_factory.mktemp("singlefile")
    files = {family: write_sd_checkpoint(tiny_models(family), root / f"{family}.safetensors") for family in SD_PARTS}
    files["flux"] = write_flux_transformer(tiny_models("flux"), root / "flux-transformer.safetensors")
    return files


def _same_weights(loaded: torch.nn.Module, reference: torch.nn.Module) -> list[str]:
    mine, theirs = loaded.state_dict(), reference.state_dict()
    return [k for k in theirs if k not in mine or mine[k].is_meta or not torch.equal(mine[k], theirs[k])]


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_the_single_file_loaders_read_the_converted_file_back_to_every_weight_of_the_folder(
        family, checkpoints, tiny_models):
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = tiny_models(family)
    model = open_single_file(checkpoints[family], family, folder, folder if family == "flux" else None)
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
               "text_encoder_2": CLIPTextModelWithProjection, "transformer": FluxTransformer2DModel}
    for part in SD_PARTS.get(family, ["transformer"]):
        loaded = model.load_part(classes[part], part)
        assert not _same_weights(loaded, classes[part].from_pretrained(folder, subfolder=part)), part


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_a_job_trains_on_a_single_file_checkpoint(family, checkpoints, tiny_models, dataset_dir, tmp_path):
    folder = tiny_models(family)
    base = {"uri": checkpoints[family].as_uri(), "config": folder.as_uri()}
    if family == "flux":
        base["components"] = folder.as_uri()
    recipe = run_recipe_for(tmp_path, base_spec(family, folder, dataset_dir, tmp_path / "out", baseModel=base))
    assert isinstance(recipe.inputs.model_dir, SingleFileModel)
    assert {(e.name, e.step) for e in recipe.manifest.manifest.checkpoints} == {("epoch-0001", 2)}
    kohya = load_file(recipe.outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors")
    ups = [v for k, v in kohya.items() if k.endswith("lora_up.weight")]
    assert ups and all(torch.isfinite(v).all() for v in ups)
    assert any(v.abs().sum() > 0 for v in ups)  # zero at the start: the steps trained the LoRA


@pytest.mark.parametrize(("family", "file_family"), [("sdxl", "sd15"), ("sd15", "sdxl"), ("sd15", "flux"),
                                                     ("flux", "sdxl")])
def test_a_file_of_another_family_is_refused_naming_the_field_the_file_and_what_its_keys_say(
        family, file_family, checkpoints, tmp_path):
    with pytest.raises(ModelError) as err:
        open_single_file(checkpoints[file_family], family, None, tmp_path)
    message = str(err.value)
    assert "baseModel.family" in message and checkpoints[file_family].name in message
    assert f"is {family} but" in message and f"({file_family})" in message


def test_a_file_of_no_known_layout_is_refused(tmp_path):
    file = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, file)
    with pytest.raises(ModelError, match="other.safetensors is none of the SD1.5, SDXL or Flux.1 layouts"):
        open_single_file(file, "sdxl", None, None)


def test_an_unreadable_or_pickled_file_is_a_model_error_naming_the_file(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(ModelError, match="baseModel.uri: broken.safetensors is not a readable safetensors file"):
        open_single_file(broken, "sd15", None, None)
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"PK")
    with pytest.raises(ModelError, match="baseModel.uri: model.ckpt is not a .safetensors file"):
        open_single_file(pickled, "sd15", None, None)


def test_a_flux_transformer_file_needs_the_components_folder(checkpoints):
    with pytest.raises(ModelError, match="baseModel.components: flux-transformer.safetensors is a Flux"):
        open_single_file(checkpoints["flux"], "flux", None, None)


def test_a_config_folder_without_a_parts_config_is_refused_naming_it(checkpoints, tmp_path):
    with pytest.raises(ModelError, match=f"baseModel.config: {tmp_path} has no unet/config.json"):
        open_single_file(checkpoints["sd15"], "sd15", tmp_path, None)


def test_a_missing_single_file_is_a_model_error_naming_the_field(tmp_path, tiny_models, dataset_dir):
    from lora_operator.api import resolve_spec
    from lora_trainer.inputs import Resolver

    spec = resolve_spec(base_spec("sd15", tmp_path / "absent.safetensors", dataset_dir, tmp_path / "out"))
    with pytest.raises(ModelError, match="baseModel.uri: .*absent.safetensors"):
        Resolver(env={}).base_model(spec.base_model, tmp_path)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux-dev", "flux-schnell"])
def test_the_shipped_standard_configs_build_the_published_architectures(family):
    """Built on the meta device: the shapes of the public checkpoints, no memory."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig

    folder = BUNDLED_CONFIGS / family
    with torch.device("meta"):
        if family.startswith("flux"):
            model = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(folder / "transformer"))
            assert 11.8e9 < sum(p.numel() for p in model.parameters()) < 12.0e9  # "a 12 billion parameter" model
            assert model.config.guidance_embeds == (family == "flux-dev")  # schnell is not guidance-distilled
            return
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    unet_params = sum(p.numel() for p in unet.parameters())
    # SD1.5's UNet has 859.5 M parameters, SDXL's 2.567 B; both VAEs 83.7 M.
    expected = {"sd15": range(859_000_000, 860_000_000), "sdxl": range(2_567_000_000, 2_568_000_000)}[family]
    assert unet_params in expected
    assert sum(p.numel() for p in vae.parameters()) in range(83_600_000, 83_700_000)
    widths = [CLIPTextConfig.from_pretrained(folder / part).hidden_size for part in SD_PARTS[family][2:]]
    assert widths == {"sd15": [768], "sdxl": [768, 1280]}[family]


@pytest.mark.parametrize(("family", "diffusers_type"), [("sd15", "v1"), ("sdxl", "xl_base")])
def test_a_full_size_file_in_the_standard_layout_matches_the_shipped_configs(family, diffusers_type):
    """The shipped configs against a full-size original-layout checkpoint, on the meta device (no memory):
    diffusers recognizes the file as the real model type and maps every tensor onto the configured model."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        infer_diffusers_model_type,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lora_trainer.singlefile import layout_of

    folder = BUNDLED_CONFIGS / family
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        encoders = [cls(CLIPTextConfig.from_pretrained(folder / part)) for cls, part in
                    zip([CLIPTextModel, CLIPTextModelWithProjection], SD_PARTS[family][2:], strict=False)]
    checkpoint = sd_checkpoint(unet, vae, encoders)
    assert infer_diffusers_model_type(checkpoint) == diffusers_type
    assert layout_of(set(checkpoint)) == family

    def shapes(state):
        return {k: tuple(v.shape) for k, v in state.items()}

    assert shapes(convert_ldm_unet_checkpoint(checkpoint, unet.config)) == shapes(unet.state_dict())
    assert shapes(convert_ldm_vae_checkpoint(checkpoint, vae.config)) == shapes(vae.state_dict())


def test_parts_that_do_not_fit_the_config_name_the_file_and_the_config(checkpoints):
    """The tiny file against the standard SD1.5 configs: its UNet does not fit, and the error says where."""
    from diffusers import UNet2DConditionModel

    model = open_single_file(checkpoints["sd15"], "sd15", None, None)
    assert model.config == BUNDLED_CONFIGS / "sd15"
    with pytest.raises(ModelError, match=r"baseModel.uri: cannot load unet from sd15.safetensors with the config in "
                                         r".*model_configs/sd15/unet"):
        model.load_part(UNet2DConditionModel, "unet")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_shipped_clip_tokenizers_encode_as_the_published_ones(family, checkpoints):
    """CLIP's published ids: "a photo of a cat" is <start> a photo of a cat <end>."""
    from transformers import CLIPTokenizer

    model = open_single_file(checkpoints[family], family, None, None)
    for part in ["tokenizer", "tokenizer_2"][:len(SD_PARTS[family]) - 2]:
        tokenizer = model.load_part(CLIPTokenizer, part)
        assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_a_config_folder_whose_tokenizer_has_no_vocabulary_is_refused(checkpoints, tiny_models, tmp_path):
    """transformers would build an empty CLIP tokenizer from tokenizer_config.json alone: refused instead."""
    from transformers import CLIPTokenizer

    config = tmp_path / "config"
    no_vocabulary = shutil.ignore_patterns("vocab.json", "tokenizer.json", "*.safetensors")
    shutil.copytree(tiny_models("sd15"), config, ignore=no_vocabulary)
    model = open_single_file(checkpoints["sd15"], "sd15", config, None)
    with pytest.raises(ModelError, match=f"baseModel.config: cannot load tokenizer from {config}: no tokenizer.json or "
                                         "vocab.json or spiece.model in tokenizer/"):
        model.load_part(CLIPTokenizer, "tokenizer")


def test_the_any_width_flux_conversion_agrees_with_diffusers_at_flux1_width():
    """bfl.py converts the narrow architectures diffusers' converter cannot split; at Flux.1's own width
    (meta device, no memory) both give the same tensors under the same names."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
    from kohya_rules import bfl_flux_checkpoint
    from test_kohya_flux import FLUX1_DEV

    from lora_trainer.bfl import bfl_to_diffusers

    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX1_DEV)
    bfl = bfl_flux_checkpoint(model.state_dict(), 19, 38)
    ours = bfl_to_diffusers({f"model.diffusion_model.{k}": v for k, v in bfl.items()}, dict(model.config))
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert ours.keys() == model.state_dict().keys()


def test_config_or_components_beside_a_model_folder_are_refused(tmp_path, tiny_models, dataset_dir):
    from lora_operator.api import resolve_spec
    from lora_trainer.inputs import Resolver

    folder = tiny_models("sd15")
    spec = resolve_spec(base_spec("sd15", folder, dataset_dir, tmp_path / "out", baseModel={"config": folder.as_uri()}))
    with pytest.raises(ModelError, match="baseModel.config is for a single-file baseModel.uri; .* is a folder"):
        Resolver(env={}).base_model(spec.base_model, tmp_path)


def test_a_flux_file_without_a_guidance_embedder_takes_the_schnell_config(checkpoints, tmp_path):
    assert open_single_file(checkpoints["flux"], "flux", None, tmp_path).config == BUNDLED_CONFIGS / "flux-dev"
    schnell = tmp_path / "schnell.safetensors"
    save_file({k: v for k, v in load_file(checkpoints["flux"]).items() if not k.startswith("guidance_in.")}, schnell)
    assert open_single_file(schnell, "flux", None, tmp_path).config == BUNDLED_CONFIGS / "flux-schnell"


def test_a_file_missing_a_part_names_the_part_and_the_file(checkpoints, tiny_models, tmp_path):
    """An SD1.5 file saved without its VAE (some merges ship one apart) fails at that part, not with a traceback."""
    from diffusers import AutoencoderKL

    no_vae = tmp_path / "no-vae.safetensors"
    save_file({k: v for k, v in load_file(checkpoints["sd15"]).items() if not k.startswith("first_stage_model.")},
              no_vae)
    model = open_single_file(no_vae, "sd15", tiny_models("sd15"), None)
    with pytest.raises(ModelError, match="baseModel.uri: cannot load vae from no-vae.safetensors"):
        model.load_part(AutoencoderKL, "vae")

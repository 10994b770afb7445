"""previews.trueGuidance: real classifier-free guidance for families whose previews.guidance is distilled
(Flux.1, Kontext), refused by every other family; previews.negativePrompt taken exactly where a
classifier-free guidance uses it, refused elsewhere."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from conftest import base_spec, write_job
from lora_operator.api import ExitCode, Previews
from lora_operator.api.families import FAMILIES, family_row
from lora_trainer.cli import main
from lora_trainer.errors import ConfigError
from lora_trainer.families import family_class, get_family
from lora_trainer.families.base import preview_guidance
from lora_trainer.previews import check_previews, generate

PROMPT = "tkxw, a square"


def test_true_guidance_previews_are_flux_pipelines_true_cfg_against_the_empty_prompt(tiny_models):
    """trueGuidance 4 changes the previews, and they are what FluxPipeline itself draws with true_cfg_scale=4
    and the empty negative prompt at the previews' seed (the distilled guidance stays previews.guidance)."""
    from diffusers import DiffusionPipeline, FluxPipeline

    family = get_family("flux")
    parts = family.load(tiny_models("flux"), torch.float32)
    guided = Previews(steps=3, images_per_prompt=1, true_guidance=4.0)
    off = Previews(steps=3, images_per_prompt=1)
    preview = np.asarray(generate(family, parts, guided, [PROMPT], (32, 32))[0][0]).astype(int)
    unguided = np.asarray(generate(family, parts, off, [PROMPT], (32, 32))[0][0]).astype(int)
    assert np.abs(preview - unguided).mean() > 1

    pipe = DiffusionPipeline.from_pretrained(tiny_models("flux"))
    assert isinstance(pipe, FluxPipeline)
    pipe.set_progress_bar_config(disable=True)
    direct = pipe(PROMPT, negative_prompt="", true_cfg_scale=4.0, guidance_scale=preview_guidance(family, guided),
                  num_inference_steps=3, height=32, width=32, max_sequence_length=family.max_sequence_length,
                  generator=[torch.Generator().manual_seed(guided.seed)]).images[0]
    assert np.abs(np.asarray(direct).astype(int) - preview).max() <= 1  # float rounding at most


@pytest.mark.parametrize("family", FAMILIES)
def test_every_preview_argument_is_one_the_familys_pipeline_takes(family):
    """With every guidance option a family accepts switched on, each argument its previews pass is a
    parameter of its row's pipeline: an option is applied, never dropped into **kwargs."""
    import diffusers

    f = family_class(family)
    settings = {"negative_prompt": "blurry"} if f.preview_negative and f.preview_cfg else {}
    if f.preview_cfg:
        settings[f.preview_cfg] = 4.0
    previews = Previews(**settings)
    check_previews(f(), previews)
    kwargs = f().pipeline_kwargs(previews)
    call = inspect.signature(getattr(diffusers, family_row(family).pipeline).__call__).parameters
    assert set(kwargs) <= set(call), set(kwargs) - set(call)
    if f.preview_cfg == "true_guidance":
        assert (kwargs["true_cfg_scale"], kwargs["negative_prompt"]) == (4.0, "blurry")


@pytest.mark.parametrize(("family", "settings", "message"), [
    ("sd15", {"true_guidance": 4.0}, r"previews.trueGuidance: sd15 has no classifier-free guidance apart from "
                                     r"previews.guidance"),
    ("qwen-image", {"true_guidance": 2.0}, r"previews.trueGuidance: qwen-image "),
    ("flux2", {"true_guidance": 2.0}, r"previews.trueGuidance: flux2 "),
    ("flux", {"negative_prompt": "blurry"}, r"previews.negativePrompt: flux uses it only for classifier-free "
                                            r"guidance, which previews.trueGuidance 1 turns off"),
    ("sd15", {"negative_prompt": "blurry", "guidance": 1.0}, r"previews.guidance 1 turns off"),
    ("flux2", {"negative_prompt": "blurry"}, r"previews.negativePrompt: flux2's preview pipeline takes no negative"),
    ("flux2-klein", {"negative_prompt": "blurry"}, r"previews.negativePrompt: flux2-klein's preview pipeline"),
])
def test_settings_a_familys_previews_would_ignore_are_refused_naming_the_field(family, settings, message):
    with pytest.raises(ConfigError, match=message):
        check_previews(get_family(family), Previews(**settings))


@pytest.mark.parametrize(("family", "settings"), [
    ("flux", {"true_guidance": 4.0, "negative_prompt": "blurry"}),
    ("flux-kontext", {"true_guidance": 4.0}),
    ("sd15", {"negative_prompt": "blurry"}),
    ("chroma", {"negative_prompt": "blurry", "guidance": 4.0}),
])
def test_settings_a_family_uses_pass(family, settings):
    check_previews(get_family(family), Previews(**settings))


def test_sd15_job_with_true_guidance_fails_as_bad_config_before_loading(tmp_path, dataset_dir, capsys):
    """The whole trainer path: the job ends BAD_CONFIG with the field named (no model is read: the folder is
    empty)."""
    model = tmp_path / "model"
    model.mkdir()
    spec = base_spec("sd15", model, dataset_dir, tmp_path / "out", previews={"trueGuidance": 4})
    assert main(["run", str(write_job(tmp_path / "job.yaml", spec))]) == ExitCode.BAD_CONFIG
    assert "previews.trueGuidance: sd15 has no classifier-free guidance" in capsys.readouterr().err


def test_the_api_reads_true_guidance_from_one_to_fifty_default_off():
    assert Previews().true_guidance == 1.0
    assert Previews.model_validate({"trueGuidance": 3.5}).true_guidance == 3.5
    for bad in (0.5, 0.0, 51.0):
        with pytest.raises(ValidationError, match="trueGuidance"):
            Previews.model_validate({"trueGuidance": bad})

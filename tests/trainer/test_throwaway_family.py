"""The proof that a family is one table row plus one trainer module: a family defined only in this test
(an SD1.5-like model under another name, with its own sizes, step preset and adapter types) passes the
conformance checks, trains, previews and exports through `lora-train run`, without any other module
naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_conformance import check_family
from safetensors.torch import load_file

from conftest import base_spec, job_prefix, manifest, write_job
from lora_operator.api import ExitCode
from lora_operator.api.families import FamilyRow, StepPreset, register, unregister
from lora_trainer.cli import main
from lora_trainer.families.sd15 import SD15Family
from tinymodels import build_tiny_model

pytestmark = pytest.mark.trainer

TOY = FamilyRow(
    name="toy", text_encoders=("clip-l",), latent_channels=4, latent_dims=2, resolution=32,
    sizes=((32, 32), (32, 48), (48, 32)), steps=StepPreset(per_image=1, base=1),
    adapters=("lora", "embedding"), formats=("kohya", "diffusers"),
    pipeline="StableDiffusionPipeline", prediction="epsilon", trainer=f"{__name__}:ToyFamily",
)
"""The throwaway row: 1 + 1 step per image, 32 px sizes, no LoCon."""


class ToyFamily(SD15Family):
    """The throwaway family's trainer module: an SD1.5 UNet under another name, without conv adapters."""

    family = "toy"
    conv_targets: list[str] = []


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy row registered for this module's tests (taken out after), and its tiny model folder."""
    model = build_tiny_model("sd15", tmp_path_factory.mktemp("toy") / "model")
    register(TOY)
    yield model
    unregister(TOY.name)


def run_cli(tmp_path, spec) -> int:
    return main(["run", str(write_job(tmp_path / "job.yaml", spec))])


def test_the_throwaway_family_conforms_to_its_row(toy):
    check_family("toy", toy)


def test_the_throwaway_family_trains_previews_and_exports_from_its_row_alone(tmp_path, toy, dataset_dir):
    out = tmp_path / "out"
    spec = base_spec("toy", toy, dataset_dir, out, previews={"everyEpochs": 1},
                     dataset={"crop": {"mode": "center", "size": None}}, training={"steps": "auto"})
    assert run_cli(tmp_path, spec) == ExitCode.SUCCESS
    prefix = job_prefix(out)
    entries = manifest(out)["checkpoints"]
    assert {e["format"] for e in entries} == {"kohya", "diffusers"}
    assert {e["step"] for e in entries} == {1 + 3}  # the row's preset: 1 + 1 per image, 3 images
    assert (prefix / "previews/epoch-0001/p0-i0.png").is_file() and (prefix / "previews/epoch-0001/grid.png").is_file()
    kohya = load_file(prefix / "checkpoints/epoch-0001/kohya.safetensors")
    assert kohya and all(k.startswith("lora_unet_") for k in kohya)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(toy)  # the row's pipeline class loads the export
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe("tkxw, a square", num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    base = generate()
    pipe.load_lora_weights(prefix / "checkpoints/epoch-0001/diffusers", adapter_name="d")
    assert np.abs(generate() - base).max() > 1e-4


def test_the_throwaway_familys_row_decides_its_adapter_types(tmp_path, toy, dataset_dir, capsys):
    spec = base_spec("toy", toy, dataset_dir, tmp_path / "out", type="locon", network={"convDim": 2})
    assert run_cli(tmp_path, spec) == ExitCode.BAD_CONFIG
    assert "spec.type: locon is not available for family toy" in capsys.readouterr().err

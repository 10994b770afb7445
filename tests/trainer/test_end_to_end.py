"""Full tiny runs through `lora-train run job.yaml`: every family and adapter type gives loadable outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import base_spec, job_prefix, manifest, write_job
from lora_operator.api import ExitCode
from lora_trainer.cli import main
from lora_trainer.export import file_digest

pytestmark = pytest.mark.trainer


def pipeline(folder):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt="tkxw, a square", **kwargs):
    if type(pipe).__name__ == "FluxPipeline":
        kwargs["max_sequence_length"] = 32
    return pipe(prompt, num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images


def run_cli(tmp_path, spec) -> int:
    return main(["run", str(write_job(tmp_path / "job.yaml", spec))])


def test_sd15_lora_trains_through_the_cli_and_both_formats_load_and_change_images(tmp_path, tiny_models,
                                                                                   dataset_dir):
    out = tmp_path / "out"
    spec = base_spec("sd15", tiny_models("sd15"), dataset_dir, out, previews={"everyEpochs": 1})
    assert run_cli(tmp_path, spec) == ExitCode.SUCCESS
    prefix = job_prefix(out)
    entries = manifest(out)["checkpoints"]
    assert {e["format"] for e in entries} == {"kohya", "diffusers"}
    for entry in entries:
        assert entry["name"] == "epoch-0001" and entry["step"] == 2
        assert (entry["sizeBytes"], entry["sha256"]) == file_digest(prefix / entry["path"])
    assert json.loads((prefix / "progress.json").read_text())["phase"] == "done"
    # the operator reads the manifest when this count changed: setup's, the epoch's and the end's writes
    assert json.loads((prefix / "progress.json").read_text())["manifestWrites"] == 3
    assert (prefix / "progress.json").stat().st_mtime_ns >= (prefix / "manifest.json").stat().st_mtime_ns
    assert (prefix / "previews/epoch-0001/p0-i0.png").is_file() and (prefix / "previews/epoch-0001/grid.png").is_file()
    assert manifest(out)["finished"] is True

    kohya = load_file(prefix / "checkpoints/epoch-0001/kohya.safetensors")
    assert kohya and all(k.startswith("lora_unet_") for k in kohya)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya

    assert_both_formats_change_the_image_alike(tiny_models("sd15"), prefix / "checkpoints/epoch-0001")


def assert_both_formats_change_the_image_alike(model, folder):
    """The checkpoint's diffusers folder changes the base's image, and its kohya file gives the same image."""
    pipe = pipeline(model)
    base = generate(pipe)
    pipe.load_lora_weights(folder / "diffusers", adapter_name="d")
    with_diffusers = generate(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(folder / "kohya.safetensors"), adapter_name="k")
    with_kohya = generate(pipe)
    assert np.abs(with_diffusers - base).max() > 1e-3
    np.testing.assert_allclose(with_kohya, with_diffusers, atol=1e-5)


def test_sdxl_lora_with_text_encoders_loads_in_both_formats(tmp_path, tiny_models, dataset_dir):
    out = tmp_path / "out"
    spec = base_spec("sdxl", tiny_models("sdxl"), dataset_dir, out,
                     training={"textEncoderLearningRate": 1e-2, "textEncoderRatio": 1.0})
    assert run_cli(tmp_path, spec) == ExitCode.SUCCESS
    folder = job_prefix(out) / "checkpoints/epoch-0001"
    kohya = load_file(folder / "kohya.safetensors")
    prefixes = {k.split("_")[0] + "_" + k.split("_")[1] for k in kohya}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha" in kohya

    assert_both_formats_change_the_image_alike(tiny_models("sdxl"), folder)


def test_flux_lora_diffusers_folder_loads_and_kohya_keys_name_bfl_block_layers(tmp_path, tiny_models,
                                                                                dataset_dir):
    out = tmp_path / "out"
    spec = base_spec("flux", tiny_models("flux"), dataset_dir, out, previews={"everyEpochs": 1})
    assert run_cli(tmp_path, spec) == ExitCode.SUCCESS
    folder = job_prefix(out) / "checkpoints/epoch-0001"
    assert (job_prefix(out) / "previews/epoch-0001/grid.png").is_file()

    pipe = pipeline(tiny_models("flux"))
    kohya = load_file(folder / "kohya.safetensors")
    layer_names = {k.split(".")[0] for k in kohya}
    # sd-scripts' BFL names (test_kohya_flux maps each onto the original model); alpha / rank stays 4 / 4.
    assert layer_names and all(n.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_"))
                               for n in layer_names)
    assert all(kohya[f"{n}.alpha"].item() == 4.0 * kohya[f"{n}.lora_down.weight"].shape[0] / 4 for n in layer_names)

    base = generate(pipe)
    pipe.load_lora_weights(folder / "diffusers", adapter_name="d")
    assert np.abs(generate(pipe) - base).max() > 1e-4


def test_locon_adds_conv_adapters_at_conv_rank_and_alpha(tmp_path, tiny_models, dataset_dir):
    out = tmp_path / "out"
    spec = base_spec("sd15", tiny_models("sd15"), dataset_dir, out, type="locon",
                     network={"dim": 4, "alpha": 2, "convDim": 2, "convAlpha": 1})
    assert run_cli(tmp_path, spec) == ExitCode.SUCCESS
    folder = job_prefix(out) / "checkpoints/epoch-0001"
    kohya = load_file(folder / "kohya.safetensors")
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert kohya[f"{conv}.lora_down.weight"].shape[:2] == (2, 32)
    assert kohya[f"{conv}.lora_down.weight"].ndim == 4
    assert kohya[f"{conv}.alpha"].item() == 1.0
    linear = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert kohya[f"{linear}.lora_down.weight"].shape[0] == 4 and kohya[f"{linear}.alpha"].item() == 2.0
    with safe_open(folder / "kohya.safetensors", "pt") as fh:
        assert json.loads(fh.metadata()["ss_network_args"]) == {"conv_alpha": 1.0, "conv_dim": 2}

    pipe = pipeline(tiny_models("sd15"))
    base = generate(pipe)
    pipe.load_lora_weights(folder / "diffusers", adapter_name="d")
    assert np.abs(generate(pipe) - base).max() > 1e-3


def test_locon_on_flux_is_refused_naming_the_field(tmp_path, tiny_models, dataset_dir, capsys):
    spec = base_spec("flux", tiny_models("flux"), dataset_dir, tmp_path / "out", type="locon",
                     network={"convDim": 2})
    assert run_cli(tmp_path, spec) == ExitCode.BAD_CONFIG
    assert "type: locon" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_embedding_loads_with_load_textual_inversion_and_changes_images(tmp_path, tiny_models, dataset_dir, family):
    out = tmp_path / "out"
    spec = base_spec(family, tiny_models(family), dataset_dir, out, type="embedding",
                     embedding={"token": "<tkxw>", "initialPhrase": "square", "vectors": 2},
                     dataset={"captionPrefix": "<tkxw>, "}, training={"unetLearningRate": 5e-2})
    assert run_cli(tmp_path, spec) == ExitCode.SUCCESS
    entries = manifest(out)["checkpoints"]
    assert [e["format"] for e in entries] == ["embedding"]
    path = job_prefix(out) / entries[0]["path"]
    tensors = load_file(path)
    pipe = pipeline(tiny_models(family))
    prompt = "<tkxw>, a square"
    base = generate(pipe, prompt)
    if family == "sd15":
        assert list(tensors) == ["emb_params"] and tensors["emb_params"].shape == (2, 32)
        pipe.load_textual_inversion(str(path), token="<tkxw>")
    else:
        assert set(tensors) == {"clip_l", "clip_g"}
        pipe.load_textual_inversion(tensors["clip_l"], token="<tkxw>", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(tensors["clip_g"], token="<tkxw>", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
    assert np.abs(generate(pipe, prompt) - base).max() > 1e-4

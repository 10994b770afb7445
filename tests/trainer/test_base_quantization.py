"""training.baseQuantization: the frozen denoiser loads quantized through the shared loading path, the
adapter trains in full precision, and its files are the same as without quantization."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from torchao.quantization import Float8Tensor

from lora_operator.api.families import FAMILIES
from lora_trainer.errors import ConfigError
from lora_trainer.memory import Weights, choose_quantization

pytestmark = pytest.mark.trainer

STEPS = {"steps": 2}
DIFFUSERS_FILE = "checkpoints/epoch-0001/diffusers/pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_models, dataset_dir):
    """Two tiny Flux runs on CPU, the same but for baseQuantization: none and fp8 (torchao float8 runs on CPU)."""
    from conftest import runs_differing_in

    return runs_differing_in(tmp_path_factory, tiny_models("flux"), dataset_dir, "flux", "baseQuantization",
                             ["none", "fp8"], STEPS)


def linears(module: torch.nn.Module) -> list[torch.Tensor]:
    """The frozen weights of the denoiser's linear layers (peft's wrappers: their base layer's)."""
    return [m.weight for name, m in module.named_modules()
            if isinstance(m, torch.nn.Linear) and "lora_" not in name]


def test_fp8_loads_the_denoiser_linears_as_float8_and_only_the_denoiser(runs):
    quantized, plain = runs["fp8"].parts, runs["none"].parts
    assert all(isinstance(w, Float8Tensor) for w in linears(quantized.denoiser))
    assert not any(isinstance(w, Float8Tensor) for w in linears(plain.denoiser))
    for encoder in (*quantized.text_encoders, quantized.vae):  # only the denoiser is quantized
        assert not any(isinstance(p, Float8Tensor) for p in encoder.parameters())
    assert runs["fp8"].base_quantization == "fp8"


def test_the_adapter_stays_in_full_precision_and_trains(runs):
    recipe = runs["fp8"]
    trainable = [p for p in recipe.parts.denoiser.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 and not isinstance(p, Float8Tensor) for p in trainable)
    lora_b = [v for k, v in recipe.adapter.state_dict().items() if "lora_B" in k or "lora_up" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: two steps moved it


def test_the_files_have_the_same_keys_shapes_and_dtypes_as_without_quantization(runs):
    for name in (DIFFUSERS_FILE, "checkpoints/epoch-0001/kohya.safetensors"):
        files = {kind: load_file(r.outputs.workdir / name) for kind, r in runs.items()}
        assert files["fp8"].keys() == files["none"].keys()
        for key, value in files["fp8"].items():
            assert (value.shape, value.dtype) == (files["none"][key].shape, files["none"][key].dtype), key


def test_the_quantized_runs_file_loads_into_the_unquantized_pipeline(runs, tiny_models):
    pipe = FluxPipeline.from_pretrained(tiny_models("flux"))
    file = load_file(runs["fp8"].outputs.workdir / DIFFUSERS_FILE)
    pipe.load_lora_weights(file, adapter_name=(name := "trained"))
    loaded = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(pipe.transformer, adapter_name=name).items()}
    assert loaded.keys() == file.keys()
    assert all(torch.equal(loaded[k], file[k].to(loaded[k].dtype)) for k in file)


def test_nf4_on_cpu_is_a_clear_config_error(train):
    with pytest.raises(ConfigError, match="baseQuantization nf4 needs a CUDA GPU"):
        train("flux", training={**STEPS, "baseQuantization": "nf4"})


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_loads_its_denoiser_quantized_through_the_shared_path(train, family):
    recipe = train(family, training={**STEPS, "baseQuantization": "fp8"}, setup_only=True)
    assert linears(recipe.parts.denoiser) and all(isinstance(w, Float8Tensor) for w in linears(recipe.parts.denoiser))



def test_loha_trains_on_an_fp8_base(train):
    recipe = train("flux", type="loha", checkpoints={"formats": ["kohya"]},
                   training={"steps": 1, "baseQuantization": "fp8"})
    assert all(isinstance(w, Float8Tensor) for w in linears(recipe.parts.denoiser))
    assert any("hada_w1_a" in k for k in load_file(recipe.outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors"))


def test_auto_skips_fp8_for_dora():  # the spec refuses dora with fp8 (tests/unit/test_adapter_types.py)
    flux = Weights(denoiser=11.9, others=4.97)
    assert choose_quantization("auto", flux, 28.0, memory_gib=32, images=1, megapixels=1.05) == "fp8"
    assert choose_quantization("auto", flux, 28.0, memory_gib=32, images=1, megapixels=1.05, dora=True) == "nf4"

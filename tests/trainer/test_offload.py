"""training.offload: the frozen denoiser's layers get diffusers' group-offloading hooks (the adapter's layers do
not), and training with them gives the same loss and adapter as without.

On CPU the onload and the offload device are both the CPU (diffusers allows it; nothing moves), so these tests
show the hooks are applied where they should be and that the hooked model trains the same; the transfers
themselves and the CUDA stream need a GPU (bench/RESULTS.md says what was measured there).
"""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks.group_offloading import _GROUP_OFFLOADING
from safetensors.torch import load_file

from lora_operator.api.families import FAMILIES
from lora_trainer.errors import ConfigError
from lora_trainer.families import get_family
from lora_trainer.memory import OFFLOADED_SHARE, Weights, choose_offload, choose_quantization, peak_gib
from lora_trainer.offload import offload_kwargs, offload_wanted

pytestmark = pytest.mark.trainer

KOHYA_FILE = "checkpoints/epoch-0001/kohya.safetensors"
TRAINING = {"steps": 3, "gradientCheckpointing": "on"}  # offload turns checkpointing on: both runs have it


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_models, dataset_dir):
    """Two tiny Flux runs on CPU, the same but for training.offload: none and blocks."""
    from conftest import runs_differing_in

    return runs_differing_in(tmp_path_factory, tiny_models("flux"), dataset_dir, "flux", "offload",
                             ["none", "blocks"], TRAINING)


def hooked(module: torch.nn.Module) -> bool:
    """Whether `module` itself carries a group-offloading hook."""
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(_GROUP_OFFLOADING) is not None


def block_layers(denoiser: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The leaf Linear layers inside the denoiser's transformer blocks, by name."""
    return {name: m for name, m in denoiser.named_modules()
            if "transformer_blocks." in name and isinstance(m, torch.nn.Linear)}


def test_the_blocks_frozen_layers_are_hooked_and_the_adapters_are_not(runs):
    layers = block_layers(runs["blocks"].parts.denoiser)
    frozen = {n: m for n, m in layers.items() if "lora_" not in n}
    adapter = {n: m for n, m in layers.items() if "lora_" in n}
    assert frozen and adapter
    assert all(hooked(m) for m in frozen.values())  # the base layers peft wrapped kept their hooks
    assert not any(hooked(m) for m in adapter.values())
    assert all(not p.requires_grad for m in frozen.values() for p in m.parameters())
    assert runs["blocks"].offload is True


def test_without_offload_nothing_is_hooked(runs):
    recipe = runs["none"]
    assert recipe.offload is False
    assert not any(hooked(m) for m in recipe.parts.denoiser.modules())


def test_offloaded_training_gives_the_same_loss_and_adapter(runs):
    off, on = runs["none"], runs["blocks"]
    assert on.last_loss == pytest.approx(off.last_loss, rel=1e-5)
    files = {k: load_file(r.outputs.workdir / KOHYA_FILE) for k, r in runs.items()}
    assert files["blocks"].keys() == files["none"].keys()
    up = [k for k in files["none"] if "lora_up" in k]
    assert up and any(files["none"][k].abs().sum() > 0 for k in up)  # the steps moved the adapter
    for key, value in files["none"].items():
        torch.testing.assert_close(files["blocks"][key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_offload_forces_gradient_checkpointing_and_no_compile(train):
    recipe = train("flux", training={"steps": 1, "offload": "blocks", "compile": "auto"}, setup_only=True)
    assert recipe.gradient_checkpointing and not recipe.compiled
    assert recipe.parts.denoiser.is_gradient_checkpointing


def test_loha_trains_with_offload(train):
    recipe = train("flux", type="loha", checkpoints={"formats": ["kohya"]}, training={"steps": 1, "offload": "blocks"})
    layers = block_layers(recipe.parts.denoiser)
    assert layers and all(hooked(m) for m in layers.values())  # LoHa adds parameters, not Linear layers
    trainable = [p for p in recipe.parts.denoiser.parameters() if p.requires_grad]
    assert trainable and all(p.device == recipe.device for p in trainable)
    assert any("hada_w1_a" in k for k in load_file(recipe.outputs.workdir / KOHYA_FILE))


def test_a_cuda_stream_is_asked_for_on_cuda_only():
    cuda, cpu = offload_kwargs(torch.device("cuda", 0)), offload_kwargs(torch.device("cpu"))
    assert cuda["use_stream"] and cuda["non_blocking"] and cuda["offload_device"] == torch.device("cpu")
    assert not cpu["use_stream"] and not cpu["non_blocking"]
    assert cuda["offload_type"] == cpu["offload_type"] == "leaf_level"


def test_blocks_with_several_gpus_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="training.offload blocks trains on one GPU only"):
        offload_wanted("blocks", get_family("flux"), None, torch.device("cpu"), quantization="none", world=2,
                       images=1, megapixels=1.0)


def test_auto_is_off_on_cpu_and_none_stays_off():
    for setting in ("auto", "none"):
        assert not offload_wanted(setting, get_family("flux"), None, torch.device("cpu"), quantization="none",
                                  world=1, images=1, megapixels=1.0)


FLUX2_DEV = Weights(denoiser=32.0, others=24.0 + 0.084, vae=0.084)


def test_auto_offloads_only_when_the_checkpointed_peak_does_not_fit():
    flux2 = get_family("flux2").activation_gib_per_megapixel
    # Flux.2 dev with a bf16 base: 60 GiB of transformer; fits 141 GiB (H200), not 80
    assert choose_offload(FLUX2_DEV, flux2, memory_gib=80, quantization="none", images=1, megapixels=1.05)
    assert not choose_offload(FLUX2_DEV, flux2, memory_gib=141, quantization="none", images=1, megapixels=1.05)
    assert not choose_offload(None, flux2, memory_gib=24, quantization="none", images=1, megapixels=1.05)


def test_the_estimate_keeps_only_a_share_of_the_denoiser_with_offload():
    kwargs = {"quantization": "fp8", "checkpointing": True, "megapixels": 1.05, "text_parked": True}
    full = peak_gib(FLUX2_DEV, 10.0, **kwargs)
    offloaded = peak_gib(FLUX2_DEV, 10.0, **kwargs, offload=True)
    denoiser = FLUX2_DEV.denoiser * 1e9 * 1.03 / 2**30
    assert full - offloaded == pytest.approx(denoiser * (1 - OFFLOADED_SHARE), rel=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_a_step_with_its_layers_brought_in_by_the_hooks(train, family, monkeypatch):
    """Each layer is onloaded in the forward and again in the backward's recompute (checkpointing)."""
    from diffusers.hooks.group_offloading import ModuleGroup

    recipe = train(family, training={"steps": 1, "offload": "blocks"}, setup_only=True)
    groups = {id(m._diffusers_hook.get_hook(_GROUP_OFFLOADING).group) for m in recipe.parts.denoiser.modules()
              if hooked(m)}
    onloads: list[int] = []
    original = ModuleGroup.onload_
    monkeypatch.setattr(ModuleGroup, "onload_", lambda self: (onloads.append(id(self)), original(self))[1])
    loss = recipe.train_step(1)
    assert torch.isfinite(loss)
    assert groups and set(onloads) <= groups
    assert len(onloads) > len(set(onloads))  # brought in again for the recompute in the backward pass


def test_quantization_auto_with_offload_blocks_never_picks_nf4_and_counts_the_offloaded_peak():
    flux2 = get_family("flux2").activation_gib_per_megapixel
    kwargs = {"images": 1, "megapixels": 1.05}
    assert choose_quantization("auto", FLUX2_DEV, flux2, memory_gib=80, **kwargs) == "nf4"
    assert choose_quantization("auto", FLUX2_DEV, flux2, memory_gib=80, offload=True, **kwargs) == "none"
    assert choose_quantization("auto", FLUX2_DEV, flux2, memory_gib=24, offload=True, **kwargs) == "fp8"  # none fits

"""training.flow takes effect: the sampled sigmas follow the chosen density and shift, the loss weights
follow the weighting, the guidance reaches the Flux transformer, and non-flow families refuse it."""

from __future__ import annotations

import copy

import pytest
import torch

from lora_operator.api import Previews, SpecError, Training, resolve_spec
from lora_trainer.errors import ConfigError

pytestmark = pytest.mark.trainer

N = 20_000


def sigmas(recipe, flow: dict, latents=None) -> torch.Tensor:
    """N sigmas drawn by the recipe's family configured with `flow` (seeded)."""
    family = copy.copy(recipe.family)
    family.configure(recipe.parts, Training(flow=flow))
    latents = torch.zeros(1, 16, 8, 8).expand(N, -1, -1, -1) if latents is None else latents
    return family.sample_timesteps(recipe.parts, latents, torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def flux(tmp_path_factory, tiny_models, dataset_dir):
    from conftest import base_spec, run_recipe_for

    tmp = tmp_path_factory.mktemp("flux")
    return run_recipe_for(tmp, base_spec("flux", tiny_models("flux"), dataset_dir, tmp / "out"), setup_only=True)


def test_each_sampling_density_has_its_shape(flux):
    default = sigmas(flux, {})
    logit = torch.logit(default)
    assert logit.mean().item() == pytest.approx(0.0, abs=0.03)
    assert logit.std().item() == pytest.approx(1.0, abs=0.03)
    moved = torch.logit(sigmas(flux, {"logitMean": 1.0, "logitStd": 0.5}))
    assert moved.mean().item() == pytest.approx(1.0, abs=0.03)
    assert moved.std().item() == pytest.approx(0.5, abs=0.03)
    uniform = sigmas(flux, {"sampling": "uniform"})
    counts = torch.histc(uniform, bins=10, min=0, max=1)
    assert (counts / N - 0.1).abs().max() < 0.01  # flat, unlike the logit-normal's hump
    assert (torch.histc(default, bins=10, min=0, max=1) / N - 0.1).abs().max() > 0.05
    mode = sigmas(flux, {"sampling": "mode", "modeScale": 1.29})
    middle = ((mode > 0.25) & (mode < 0.75)).float().mean().item()
    assert middle > 0.6  # uniform would put half there
    assert sigmas(flux, {"sampling": "mode", "modeScale": 0.0}).mean().item() == pytest.approx(0.5, abs=0.01)


def test_a_fixed_shift_moves_sigmas_toward_noise(flux):
    plain = sigmas(flux, {"sampling": "uniform"})
    shifted = sigmas(flux, {"sampling": "uniform", "shift": 3.0})
    assert torch.allclose(shifted, 3 * plain / (1 + 2 * plain))
    assert shifted.median() > plain.median() + 0.2


def test_the_resolution_shift_grows_with_the_image(flux):
    from diffusers import FlowMatchEulerDiscreteScheduler

    parts = copy.copy(flux.parts)
    # Flux.1's own scheduler config: mu from 0.5 at 256 tokens to 1.15 at 4096 tokens.
    parts.noise_scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    family = copy.copy(flux.family)
    family.configure(parts, Training(flow={"sampling": "uniform", "resolutionShift": True}))

    def draw(side):
        latents = torch.zeros(1, 16, side, side).expand(N, -1, -1, -1)
        return family.sample_timesteps(parts, latents, torch.Generator().manual_seed(0))

    plain = sigmas(flux, {"sampling": "uniform"})
    small, large = draw(32), draw(128)  # 256 and 4096 tokens
    e = torch.tensor([0.5, 1.15]).exp()
    assert torch.allclose(small, e[0] / (e[0] + 1 / plain - 1), atol=1e-5)
    assert torch.allclose(large, e[1] / (e[1] + 1 / plain - 1), atol=1e-5)
    assert large.median() > small.median() > plain.median()


def test_loss_weighting_follows_the_sigmas(flux):
    family = copy.copy(flux.family)
    s = torch.tensor([0.1, 0.5, 0.9])
    family.configure(flux.parts, Training())
    assert torch.equal(family.loss_weights(flux.parts, s, 0.0), torch.ones(3))
    family.configure(flux.parts, Training(flow={"weighting": "sigma_sqrt"}))
    assert torch.allclose(family.loss_weights(flux.parts, s, 0.0), s ** -2)
    family.configure(flux.parts, Training(flow={"weighting": "cosmap"}))
    cosmap = family.loss_weights(flux.parts, s, 0.0)
    assert cosmap[1] > cosmap[0] and cosmap[1] > cosmap[2]


def guidance_seen(recipe) -> list[torch.Tensor]:
    """Every guidance the transformer's guidance embedder is given while training (the transformer
    scales it by 1000 before the embedder, as it does the timestep)."""
    seen = []
    embed = recipe.parts.denoiser.time_text_embed

    def hook(module, args, kwargs):
        seen.append(args[1].detach().clone() / 1000)

    embed.register_forward_pre_hook(hook, with_kwargs=True)
    recipe.guidance = seen


@pytest.mark.parametrize("flow", [{"guidance": 3.5}, {"sampling": "uniform", "shift": 3.0, "weighting": "cosmap"}])
def test_flow_options_change_the_trained_flux_adapter(train, flow):
    plain = train("flux", training={"steps": 2}, after_setup=guidance_seen)
    changed = train("flux", training={"steps": 2, "flow": flow}, after_setup=guidance_seen)
    expected = flow.get("guidance", 1.0)
    assert changed.guidance and all(torch.all(g == expected) for g in changed.guidance)
    assert all(torch.all(g == 1.0) for g in plain.guidance)
    a, b = plain.adapter.state_dict(), changed.adapter.state_dict()
    assert any(not torch.equal(v, b[k]) for k, v in a.items() if "lora_B" in k)


def test_guidance_is_refused_by_a_transformer_without_a_guidance_embedder(flux):
    parts = copy.copy(flux.parts)
    parts.denoiser = copy.copy(parts.denoiser)
    parts.denoiser.register_to_config(guidance_embeds=False)
    family = copy.copy(flux.family)
    with pytest.raises(ConfigError, match=r"training\.flow\.guidance"):
        family.configure(parts, Training(flow={"guidance": 3.5}))
    family.configure(parts, Training(flow={"sampling": "uniform"}))  # the rest applies to schnell too
    spelled_out = Training.model_validate(Training().model_dump(by_alias=True))  # as a resolved spec has it
    family.configure(parts, spelled_out)


def test_preview_guidance_is_refused_by_a_transformer_without_a_guidance_embedder(flux):
    """FluxPipeline gives a transformer without a guidance embedder no guidance: previews.guidance would be
    ignored in silence, so it is refused; trueGuidance (real classifier-free guidance) is what schnell takes."""
    schnell = copy.copy(flux.parts)
    schnell.denoiser = copy.copy(schnell.denoiser)
    schnell.denoiser.register_to_config(guidance_embeds=False)
    family = copy.copy(flux.family)
    with pytest.raises(ConfigError, match=r"^previews\.guidance: 3\.5 .*previews\.trueGuidance"):
        family.configure(schnell, Training(), Previews(prompts=["a corgi"], guidance=3.5))
    family.configure(schnell, Training(), Previews(prompts=["a corgi"], true_guidance=4.0))
    family.configure(schnell, Training(), None)  # no previews
    spelled_out = Previews.model_validate(Previews(prompts=["a corgi"]).model_dump(by_alias=True))  # as the pod has it
    family.configure(schnell, Training(), spelled_out)
    family.configure(flux.parts, Training(), Previews(prompts=["a corgi"], guidance=3.5))  # dev embeds it


def test_a_schnell_job_with_preview_guidance_fails_at_setup(tmp_path, dataset_dir):
    """The trainer hands the job's previews to the family (run_setup): a tiny Flux built without a guidance
    embedder refuses previews.guidance before training starts."""
    from conftest import base_spec, run_recipe_for
    from tinymodels import flux as tiny_flux

    model = tmp_path / "schnell"
    tiny_flux.build(model, guidance_embeds=False)
    spec = base_spec("flux", model, dataset_dir, tmp_path / "out", previews={"guidance": 3.5})
    with pytest.raises(ConfigError, match=r"^previews\.guidance: "):
        run_recipe_for(tmp_path, spec, setup_only=True)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_epsilon_families_refuse_flow_options(family):
    spec = {"baseModel": {"family": family, "uri": "hf://org/model"}, "dataset": {"uri": "s3://b/data"},
            "output": {"uri": "s3://b/out"}, "training": {"flow": {"sampling": "uniform"}}}
    with pytest.raises(SpecError, match=r"training\.flow: family .* is not a flow-matching model"):
        resolve_spec(spec)
    del spec["training"]
    resolved = resolve_spec(spec)
    resolve_spec(resolved.to_resource())  # the trainer pod resolves the spelled-out spec again


def test_a_fixed_and_a_resolution_shift_exclude_each_other():
    with pytest.raises(ValueError, match="shift and resolutionShift"):
        Training(flow={"shift": 3.0, "resolutionShift": True})

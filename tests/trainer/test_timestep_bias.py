"""training.timestepBias takes effect: each strategy draws the timesteps it names as often as its
multiplier says, a biased job trains a different adapter, and a bias the job or its family cannot
follow is refused with the field named."""

from __future__ import annotations

import copy

import pytest
import torch

from lora_operator.api import SpecError, Training, resolve_spec
from lora_trainer.errors import ConfigError

pytestmark = pytest.mark.trainer

N = 40_000


@pytest.fixture(scope="module")
def sd15(tmp_path_factory, tiny_models, dataset_dir):
    from conftest import base_spec, run_recipe_for

    tmp = tmp_path_factory.mktemp("sd15")
    return run_recipe_for(tmp, base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp / "out"), setup_only=True)


def drawn(recipe, bias: dict) -> torch.Tensor:
    """N timesteps drawn by the recipe's family configured with `bias` (seeded)."""
    family = copy.copy(recipe.family)
    family.configure(recipe.parts, Training(timestep_bias=bias))
    return family.sample_timesteps(recipe.parts, torch.zeros(N, 4, 8, 8), torch.Generator().manual_seed(0))


def share(t: torch.Tensor, begin: int, end: int) -> float:
    return ((t >= begin) & (t < end)).float().mean().item()


def test_unbiased_timesteps_are_uniform(sd15):
    t = drawn(sd15, {})
    assert t.min() >= 0 and t.max() <= 999
    assert share(t, 750, 1000) == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize(("bias", "begin", "end", "expected"), [
    # later 0.5 x3: the noisy half drawn three times as often as the other, 3/4 of all draws
    ({"strategy": "later", "multiplier": 3, "portion": 0.5}, 500, 1000, 0.75),
    # earlier 0.25 x2: 2 x 250 / (2 x 250 + 750) = 0.4
    ({"strategy": "earlier", "multiplier": 2}, 0, 250, 0.4),
    # range 200-400 x0: never drawn (kohya's min / max timestep)
    ({"strategy": "range", "multiplier": 0, "begin": 200, "end": 400}, 200, 400, 0.0),
    # range 0-100 x10: 1000 / (1000 + 900)
    ({"strategy": "range", "multiplier": 10, "begin": 0, "end": 100}, 0, 100, 1000 / 1900),
])
def test_each_strategy_weights_the_timesteps_it_names(sd15, bias, begin, end, expected):
    t = drawn(sd15, bias)
    assert share(t, begin, end) == pytest.approx(expected, abs=0.01)
    assert t.min() >= 0 and t.max() <= 999


def test_a_biased_job_trains_a_different_adapter(train):
    plain = train("sd15", training={"steps": 3})
    later = train("sd15", training={"steps": 3, "timestepBias": {"strategy": "later", "multiplier": 50,
                                                                 "portion": 0.1}})
    a, b = plain.adapter.state_dict(), later.adapter.state_dict()
    assert any(not torch.equal(v, b[k]) for k, v in a.items() if "lora_B" in k)


def test_a_range_past_the_schedulers_timesteps_is_refused(sd15):
    parts = copy.copy(sd15.parts)
    parts.noise_scheduler = copy.copy(parts.noise_scheduler)
    parts.noise_scheduler.register_to_config(num_train_timesteps=500)
    family = copy.copy(sd15.family)
    with pytest.raises(ConfigError, match=r"^training\.timestepBias\.end: 600 is past the base model's 500"):
        family.configure(parts, Training(timestep_bias={"strategy": "range", "multiplier": 2, "end": 600}))


@pytest.mark.parametrize(("bias", "message"), [
    ({"strategy": "later"}, "strategy later with multiplier 1 weights every timestep alike"),
    ({"multiplier": 2}, "multiplier has no effect with strategy none"),
    ({"strategy": "later", "multiplier": 2, "begin": 5}, "begin has no effect with strategy later"),
    ({"strategy": "range", "multiplier": 2, "portion": 0.5}, "portion has no effect with strategy range"),
    ({"strategy": "range", "multiplier": 2, "begin": 500, "end": 400}, r"begin \(500\) must be below end \(400\)"),
    ({"strategy": "range", "multiplier": 0}, "leaves none to draw"),
    ({"strategy": "sooner", "multiplier": 2}, "Input should be 'none', 'earlier', 'later' or 'range'"),
])
def test_a_bias_that_cannot_take_effect_is_refused(bias, message):
    spec = {"baseModel": {"family": "sd15", "uri": "hf://org/model"}, "dataset": {"uri": "s3://b/data"},
            "output": {"uri": "s3://b/out"}, "training": {"timestepBias": bias}}
    with pytest.raises(SpecError, match=r"training\.timestepBias") as err:
        resolve_spec(spec)
    assert err.match(message)


@pytest.mark.parametrize("family", ["flux", "qwen-image"])
def test_flow_families_refuse_a_timestep_bias(family):
    spec = {"baseModel": {"family": family, "uri": "hf://org/model"}, "dataset": {"uri": "s3://b/data"},
            "output": {"uri": "s3://b/out"},
            "training": {"timestepBias": {"strategy": "later", "multiplier": 2}}}
    with pytest.raises(SpecError, match=r"training\.timestepBias: family .* trains by flow matching.*logitMean"):
        resolve_spec(spec)
    del spec["training"]
    resolved = resolve_spec(spec)
    resolve_spec(resolved.to_resource())  # the spelled-out defaults are not a bias


def test_a_spelled_out_bias_survives_resolving_again():
    spec = {"baseModel": {"family": "sdxl", "uri": "hf://org/model"}, "dataset": {"uri": "s3://b/data"},
            "output": {"uri": "s3://b/out"},
            "training": {"timestepBias": {"strategy": "range", "multiplier": 0, "begin": 0, "end": 200}}}
    resolved = resolve_spec(resolve_spec(spec).to_resource())
    assert resolved.training.timestep_bias.end == 200

"""training.ema: the average follows its decay formula, is written beside the raw weights, shows in the previews,
and survives a resume."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageChops
from safetensors.torch import load_file
from test_resume_and_errors import Crash, crash_at_step_3

pytestmark = pytest.mark.trainer

EMA = {"enabled": True, "decay": 0.2, "startStep": 1}


def record_weights(recipe, seen: list[dict[str, torch.Tensor]]) -> None:
    """Keeps a copy of the adapter's weights after every optimizer step."""
    step = recipe.train_step

    def wrapped(n):
        loss = step(n)
        seen.append({k: v.clone() for k, v in recipe.adapter.state_dict().items()})
        return loss

    recipe.train_step = wrapped


def expected_average(seen: list[dict[str, torch.Tensor]], decay: float, start: int) -> dict[str, torch.Tensor]:
    """The average as the field documents it: after step k, n = k - startStep - 1 steps are averaged with
    d = min(decay, (1 + n) / (10 + n)); until n > 0 the average is the weights."""
    average = {}
    for k, weights in enumerate(seen, start=1):
        n = k - start - 1
        d = 0.0 if n <= 0 else min(decay, (1 + n) / (10 + n))
        average = {key: d * average[key] + (1 - d) * w if average else w for key, w in weights.items()}
    return average


def test_the_average_follows_the_decay_formula_and_is_written_beside_the_raw_weights(train):
    seen: list[dict[str, torch.Tensor]] = []
    recipe = train(training={"steps": 5, "ema": EMA}, after_setup=lambda r: record_weights(r, seen))
    average = expected_average(seen, EMA["decay"], EMA["startStep"])
    with recipe.ema.applied():
        got = {k: v.clone() for k, v in recipe.adapter.state_dict().items()}  # views of the live parameters
    raw = recipe.adapter.state_dict()
    assert got.keys() == average.keys()
    for key in got:
        torch.testing.assert_close(got[key], average[key], rtol=0, atol=1e-7)
        assert torch.equal(raw[key], seen[-1][key])  # the trained weights are back after the block
    assert any(not torch.equal(got[k], raw[k]) for k in got)

    folder = recipe.outputs.workdir / "checkpoints/epoch-0001"
    formats = {c.format: c.path for c in recipe.manifest.manifest.checkpoints}
    assert formats.keys() == {"kohya", "diffusers", "kohya-ema", "diffusers-ema"}
    assert formats["kohya-ema"].endswith("checkpoints/epoch-0001/ema/kohya.safetensors")
    ema_file = load_file(folder / "ema/diffusers/pytorch_lora_weights.safetensors")
    raw_file = load_file(folder / "diffusers/pytorch_lora_weights.safetensors")
    for key, value in ema_file.items():  # the files hold the average and the trained weights
        torch.testing.assert_close(value, average[key], rtol=0, atol=1e-7)
        assert torch.equal(raw_file[key], raw[key])
    assert load_file(folder / "ema/kohya.safetensors").keys() == load_file(folder / "kohya.safetensors").keys()


def test_without_ema_nothing_else_is_written(train):
    recipe = train()
    assert recipe.ema is None
    assert {c.format for c in recipe.manifest.manifest.checkpoints} == {"kohya", "diffusers"}
    assert not (recipe.outputs.workdir / "checkpoints/epoch-0001/ema").exists()


def test_previews_show_the_average(train, tmp_path):
    previews = {"everyEpochs": 1, "steps": 2, "imagesPerPrompt": 1}
    runs = {name: train(tmp=tmp_path / name, training={"steps": 3, "ema": ema}, previews=previews)
            for name, ema in (("off", {}), ("late", {**EMA, "startStep": 3}), ("on", EMA))}
    grids = {name: Image.open(r.outputs.workdir / "previews/epoch-0001/grid.png").convert("RGB")
             for name, r in runs.items()}
    raw = [r.adapter.state_dict() for r in runs.values()]
    assert all(torch.equal(raw[0][k], other[k]) for other in raw[1:] for k in raw[0])  # the same training
    # An average that has not started is the weights: the same previews. One that has: other previews.
    assert ImageChops.difference(grids["off"], grids["late"]).getbbox() is None
    assert ImageChops.difference(grids["off"], grids["on"]).getbbox() is not None


def test_a_resumed_run_continues_the_average(train, tmp_path):
    spec = {"training": {"steps": 4, "epochs": 2, "ema": EMA}}
    straight = train(**spec, tmp=tmp_path / "a")
    with pytest.raises(Crash):
        train(**spec, tmp=tmp_path / "b", after_setup=crash_at_step_3)
    resumed = train(**spec, tmp=tmp_path / "b", resume=True)
    assert resumed.start_step == 2 and resumed.ema.model.optimization_step == 4
    for name in ("kohya.safetensors", "ema/kohya.safetensors"):
        expected = load_file(tmp_path / "a/work/checkpoints/epoch-0002" / name)
        got = load_file(tmp_path / "b/work/checkpoints/epoch-0002" / name)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got), name
    assert straight.ema.model.optimization_step == 4


def test_an_embeddings_average_is_written_as_its_own_file(train):
    recipe = train(type="embedding", embedding={"token": "<tkxw>", "initialPhrase": "square", "vectors": 2},
                   training={"steps": 4, "ema": EMA})
    folder = recipe.outputs.workdir / "checkpoints/epoch-0001"
    assert {c.format for c in recipe.manifest.manifest.checkpoints} == {"embedding", "embedding-ema"}
    raw, average = load_file(folder / "embedding.safetensors"), load_file(folder / "ema/embedding.safetensors")
    assert raw.keys() == average.keys() and all(not torch.equal(raw[k], average[k]) for k in raw)
    torch.testing.assert_close(raw["emb_params"], recipe.adapter.vectors()[0], rtol=0, atol=0)

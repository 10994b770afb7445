"""SDXL size conditioning: a flipped image gets its crop_top_left mirrored (as kohya's sd-scripts do)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from lora_operator.api import Dataset, ModelFamily
from lora_trainer.data import prepare_dataset
from lora_trainer.families.sdxl import SDXLFamily

pytestmark = pytest.mark.trainer


def wide_image_with_detail_on_the_left(folder):
    """An 80x32 image whose only detail sits at the far left: the focus crop cuts near left 0."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (80, 32), (128, 128, 128))
    ImageDraw.Draw(image).rectangle((1, 4, 14, 28), fill=(250, 20, 20), outline=(0, 0, 0))
    image.save(folder / "wide.png")
    (folder / "wide.txt").write_text("a red bar")
    return folder


def time_ids(sizes):
    cond = {"pooled_prompt_embeds": torch.zeros(len(sizes), 4)}
    return SDXLFamily()._added_cond(cond, sizes, torch.zeros(1))["added_cond_kwargs"]["time_ids"].tolist()


def test_flipped_sample_mirrors_the_crop_left_in_add_time_ids(tmp_path):
    dataset = Dataset.model_validate({"crop": {"mode": "focus", "size": "32x32"}, "validationSplit": 0})
    sample = prepare_dataset(dataset, wide_image_with_detail_on_the_left(tmp_path), ModelFamily.SDXL, seed=0).train[0]
    top, left = sample.crop_top_left
    assert top == 0 and left < 8 and sample.scaled_size == (32, 80)
    # (original h, w, crop top, left, target h, w); mirrored left = scaled width - left - target width
    assert time_ids([sample.size_conditioning(False), sample.size_conditioning(True)]) == [
        [32, 80, 0, left, 32, 32], [32, 80, 0, 80 - left - 32, 32, 32]]


def test_center_crop_of_an_odd_width_mirrors_off_by_one_and_a_plain_resize_stays_at_zero(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.new("RGB", (65, 32), (9, 90, 9)).save(folder / "odd.png")
    center = Dataset.model_validate({"crop": {"mode": "center", "size": "32x32"}, "validationSplit": 0})
    sample = prepare_dataset(center, folder, ModelFamily.SDXL, seed=0).train[0]
    assert sample.size_conditioning(False)[1] == (0, 16) and sample.size_conditioning(True)[1] == (0, 17)
    resize = Dataset.model_validate({"crop": {"mode": "none", "size": "32x32"}, "validationSplit": 0})
    sample = prepare_dataset(resize, folder, ModelFamily.SDXL, seed=0).train[0]
    assert sample.size_conditioning(True)[1] == (0, 0)


def test_the_loop_passes_mirrored_crops_exactly_for_the_flipped_draws(train, tmp_path, monkeypatch):
    # A spy: the real method runs; the wrapper records what the loop passed to it.
    seen = []  # per micro-batch: (flipped, time_ids row)
    added_cond = SDXLFamily._added_cond

    def record(self, cond, sizes, noisy):
        out = added_cond(self, cond, sizes, noisy)
        seen.append(out["added_cond_kwargs"]["time_ids"][0].tolist())
        return out

    monkeypatch.setattr(SDXLFamily, "_added_cond", record)

    def record_flips(recipe):
        latents = recipe.encoder.latents

        def wrapped(keys, images):
            flips.append(keys[0][1])
            return latents(keys, images)

        recipe.encoder.latents = wrapped

    flips = []
    data = wide_image_with_detail_on_the_left(tmp_path / "data")
    recipe = train("sdxl", data_dir=data, after_setup=record_flips, training={"steps": 6, "cacheLatents": False},
                   dataset={"flip": True, "crop": {"mode": "focus", "size": "32x32"}})
    left = recipe.data.train[0].crop_top_left[1]
    assert len(flips) == len(seen) == 6 and set(flips) == {True, False}
    for flipped, row in zip(flips, seen, strict=True):
        assert row == [32, 80, 0, 80 - left - 32 if flipped else left, 32, 32]

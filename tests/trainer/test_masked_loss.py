"""dataset.maskedLoss: a mask file or the alpha channel weights the loss, transformed with its image."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from conftest import write_dataset
from lora_trainer.data.discover import discover
from lora_trainer.data.masks import latent_mask, source_mask
from lora_trainer.errors import DatasetError

pytestmark = pytest.mark.trainer


def lora_b(recipe):
    return {k: v for k, v in recipe.adapter.state_dict().items() if "lora_B" in k}


def half_mask(size=32) -> Image.Image:
    """White (counts) on the left half, black on the right."""
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size))
    return mask


def test_the_mask_is_cut_mirrored_and_averaged_like_its_image():
    mask = Image.new("L", (64, 32), 0)
    mask.paste(255, (0, 0, 16, 32))  # the leftmost quarter
    # a 64-wide image, 32x32 windows: at left 0 the white is its left half, at left 16 it is outside
    left = latent_mask(mask, (32, 64), (0, 0), (32, 32), False, (4, 4), 0.0)
    assert torch.equal(left, torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4))
    flipped = latent_mask(mask, (32, 64), (0, 0), (32, 32), True, (4, 4), 0.0)
    assert torch.equal(flipped, left.flip(-1))
    window = latent_mask(mask, (32, 64), (0, 16), (32, 32), False, (4, 4), 0.25)
    assert torch.equal(window, torch.full((4, 4), 0.25))  # the cut window holds none of the white
    assert torch.equal(latent_mask(None, (32, 32), (0, 0), (32, 32), False, (4, 4), 0.0), torch.ones(4, 4))


def test_mask_sources_and_bad_mask_files(tmp_path):
    rgba = Image.new("RGBA", (32, 32), (200, 10, 10, 0))
    rgba.putalpha(half_mask())
    rgba.save(tmp_path / "a.png")
    assert source_mask(tmp_path / "a.png", None).getpixel((0, 0)) == 255
    Image.new("RGB", (32, 32)).save(tmp_path / "b.png")
    assert source_mask(tmp_path / "b.png", None) is None
    Image.new("L", (32, 32), 7).save(tmp_path / "b.mask.png")
    assert source_mask(tmp_path / "b.png", tmp_path / "b.mask.png").getpixel((3, 3)) == 7
    Image.new("L", (16, 16)).save(tmp_path / "c.mask.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "c.png")
    with pytest.raises(DatasetError, match=r"c\.mask\.png: mask is 16x16, its image c\.png is 32x32"):
        source_mask(tmp_path / "c.png", tmp_path / "c.mask.png")
    assert [p.name for p in discover(tmp_path).images] == ["a.png", "b.png", "c.png"]


@pytest.fixture(scope="module")
def masked_sets(tmp_path_factory, dataset_dir):
    """The shared images with all-black mask files, and with half-white ones."""
    root = tmp_path_factory.mktemp("masked")
    sets = {}
    for name, mask in (("black", Image.new("L", (32, 32), 0)), ("half", half_mask())):
        folder = root / name
        shutil.copytree(dataset_dir, folder)
        for image in folder.glob("*.png"):
            mask.save(image.with_name(image.stem + ".mask.png"))
        sets[name] = folder
    return sets


def test_a_fully_masked_dataset_learns_nothing_and_the_floor_restores_it(train, masked_sets, dataset_dir):
    run = {"training": {"steps": 2}, "checkpoints": {"formats": ["kohya"]}}
    plain = lora_b(train(data_dir=dataset_dir, **run))
    assert any(v.abs().sum() > 0 for v in plain.values())
    masked = lora_b(train(data_dir=masked_sets["black"], dataset={"maskedLoss": {"enabled": True}}, **run))
    assert all(torch.equal(v, torch.zeros_like(v)) for v in masked.values())  # zero loss: B stays at its zeros
    floor = lora_b(train(data_dir=masked_sets["black"], dataset={"maskedLoss": {"enabled": True, "floor": 1.0}},
                         **run))
    assert all(torch.allclose(v, floor[k]) for k, v in plain.items())
    half = lora_b(train(data_dir=masked_sets["half"], dataset={"maskedLoss": {"enabled": True}}, **run))
    assert any(not torch.allclose(v, half[k]) for k, v in plain.items())
    off = lora_b(train(data_dir=masked_sets["black"], **run))  # masks ignored when off, and never trained on
    assert all(torch.allclose(v, off[k]) for k, v in plain.items())


def test_the_alpha_channel_masks_when_there_is_no_mask_file(train, tmp_path):
    folder = write_dataset(tmp_path / "alpha")
    for image in folder.glob("*.png"):
        rgba = Image.open(image).convert("RGBA")
        rgba.putalpha(0)
        rgba.save(image)
    run = {"training": {"steps": 2}, "checkpoints": {"formats": ["kohya"]}, "data_dir": folder}
    masked = lora_b(train(dataset={"maskedLoss": {"enabled": True}}, **run))
    assert all(torch.equal(v, torch.zeros_like(v)) for v in masked.values())
    assert any(v.abs().sum() > 0 for v in lora_b(train(**run)).values())

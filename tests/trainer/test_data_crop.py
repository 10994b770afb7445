"""Crop modes, training sizes and aspect-ratio buckets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from lora_operator.api import Crop, CropMode, ModelFamily
from lora_trainer.data import crop_to, make_buckets, target_size

pytestmark = pytest.mark.trainer


def off_centre_subject(width=192, height=64, subject_left=8) -> Image.Image:
    """A flat grey image with a detailed (noisy) 40x40 subject near the left edge."""
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    pixels[12:52, subject_left:subject_left + 40] = noise
    return Image.fromarray(pixels)


def detail(image: Image.Image) -> float:
    return float(np.asarray(image, dtype=np.float32).std())


def test_focus_keeps_an_off_centre_subject_that_center_crop_cuts_away():
    image = off_centre_subject()
    focused, (top, left) = crop_to(image, (64, 64), CropMode.FOCUS)
    centred, (_, centre_left) = crop_to(image, (64, 64), CropMode.CENTER)
    assert focused.size == centred.size == (64, 64)
    assert centre_left == 64
    assert left <= 8  # the window starts at or before the subject
    assert detail(focused) > 3 * detail(centred)


def test_focus_on_a_flat_image_crops_like_center():
    image = Image.new("RGB", (300, 100), (40, 40, 40))
    assert crop_to(image, (100, 100), CropMode.FOCUS)[1] == crop_to(image, (100, 100), CropMode.CENTER)[1]


def test_mode_none_resizes_without_cutting():
    image = off_centre_subject()
    resized, top_left = crop_to(image, (32, 32), CropMode.NONE)
    assert resized.size == (32, 32) and top_left == (0, 0)


def test_crop_scales_to_cover_before_cutting():
    image = Image.new("RGB", (400, 100))
    cut, (top, left) = crop_to(image, (50, 50), CropMode.CENTER)
    assert cut.size == (50, 50)
    assert (top, left) == (0, 75)  # scaled to 200x50, window centred


def test_crop_size_wins_over_the_family_standard_size():
    assert target_size(1000, 3000, Crop(size="32x48"), ModelFamily.SDXL) == (48, 32)


@pytest.mark.parametrize("family, hw, expected", [
    (ModelFamily.SD15, (500, 500), (512, 512)),
    (ModelFamily.SD15, (400, 800), (512, 768)),
    (ModelFamily.SD15, (900, 600), (768, 512)),
    (ModelFamily.SDXL, (1200, 800), (1024, 768)),
    (ModelFamily.FLUX, (600, 900), (768, 1024)),
])
def test_family_standard_size_follows_the_aspect_ratio(family, hw, expected):
    assert target_size(*hw, Crop(), family) == expected


def test_buckets_have_step_multiples_within_bounds_and_near_the_area():
    buckets = make_buckets(1024 * 1024, 256, 1536, 64)
    assert (1024, 1024) in buckets
    for h, w in buckets:
        assert h % 64 == 0 and w % 64 == 0
        assert 256 <= h <= 1536 and 256 <= w <= 1536
        assert h * w <= 1024 * 1024
        assert h == 1536 or w == 1536 or (min(h, w) + 64) * max(h, w) > 1024 * 1024  # as large as allowed
    ratios = [w / h for h, w in buckets]
    assert min(ratios) < 0.5 and max(ratios) > 2


def test_bucket_choice_follows_the_image_aspect_ratio():
    crop = Crop(buckets=True, size="128x128", bucket_min_side=64, bucket_max_side=256, bucket_step=32)
    wide = target_size(100, 300, crop, ModelFamily.SD15)
    tall = target_size(300, 100, crop, ModelFamily.SD15)
    square = target_size(200, 200, crop, ModelFamily.SD15)
    assert square == (128, 128)
    assert wide[1] > wide[0] and tall[0] > tall[1]
    assert wide == (tall[1], tall[0])


def test_impossible_bucket_settings_are_a_value_error():
    crop = Crop(buckets=True, size="64x64", bucket_min_side=512, bucket_max_side=1024)
    with pytest.raises(ValueError, match="no bucket"):
        target_size(100, 100, crop, ModelFamily.SD15)


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 400), height=st.integers(1, 400), target_w=st.integers(8, 96),
       target_h=st.integers(8, 96), mode=st.sampled_from(list(CropMode)))
def test_any_image_is_cut_to_exactly_the_target_size(width, height, target_w, target_h, mode):
    image = Image.new("RGB", (width, height), (10, 20, 30))
    cut, (top, left) = crop_to(image, (target_h, target_w), mode)
    assert cut.size == (target_w, target_h)
    assert top >= 0 and left >= 0

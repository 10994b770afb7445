"""Epoch order with repeats, bucketed batches, random flips."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from PIL import Image

from lora_trainer.data import Sample, epoch_order, make_batches, maybe_flip

pytestmark = pytest.mark.trainer


def sample(key: str, repeats: int = 1, size: tuple[int, int] = (32, 32)) -> Sample:
    return Sample(key=key, image=Image.new("RGB", (size[1], size[0])), caption="", repeats=repeats,
                  original_size=size, crop_top_left=(0, 0), target_size=size)


def test_epoch_order_repeats_each_sample_and_depends_on_seed_and_epoch():
    samples = [sample("a", 3), sample("b", 1), sample("c", 2)]
    order = epoch_order(samples, epoch=0, seed=1)
    assert Counter(order) == {0: 3, 1: 1, 2: 2}
    assert order == epoch_order(samples, epoch=0, seed=1)
    others = {tuple(epoch_order(samples, epoch=e, seed=1)) for e in range(1, 8)}
    assert len(others | {tuple(order)}) > 2


def test_batches_never_mix_sizes_and_cover_every_draw():
    samples = [sample(f"s{i}", 2, (32, 32) if i % 3 else (32, 64)) for i in range(10)]
    order = epoch_order(samples, epoch=0, seed=0)
    batches = make_batches(samples, order, batch_size=3)
    for batch in batches:
        assert len({samples[i].target_size for i in batch}) == 1
        assert 1 <= len(batch) <= 3
    assert sorted(i for batch in batches for i in batch) == sorted(order)
    assert batches == make_batches(samples, order, batch_size=3)


def test_flip_is_random_only_when_enabled():
    image = Image.new("RGB", (2, 1))
    image.putpixel((0, 0), (255, 0, 0))
    rng = random.Random(0)
    flips = [maybe_flip(image, rng, True).getpixel((1, 0)) == (255, 0, 0) for _ in range(100)]
    assert 30 < sum(flips) < 70
    state = rng.getstate()
    assert maybe_flip(image, rng, False) is image
    assert rng.getstate() == state

"""`tinyworld.evaluate`'s pieces: the shape confusion table, recipe fields from the command line, the VAE's crosses."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tinyworld.evaluate import another_shape, confusion, judged_scenes, with_fields
from tinyworld.judge import read
from tinyworld.pretrain_flux import FluxRecipe
from tinyworld.world import BACKGROUNDS, SHAPES, SIZE, Scene, autoencoder_set, random_scene, render


def test_the_confusion_of_rendered_images_is_their_diagonal():
    rng = random.Random(5)
    scenes = [random_scene(rng) for _ in range(60)]
    table = confusion([render(s, rng) for s in scenes], scenes)
    assert set(table) == set(SHAPES)
    assert all(set(read_as) == {asked} for asked, read_as in table.items())
    assert sum(sum(c.values()) for c in table.values()) == 60


def test_the_confusion_counts_a_missing_shape_as_none():
    scene = Scene("red", "square", "left", "white")
    blank = np.full((SIZE, SIZE, 3), BACKGROUNDS["white"], np.uint8)
    assert confusion([blank], [scene]) == {"square": {"none": 1}}


def test_recipe_fields_are_read_as_their_defaults_types():
    recipe = with_fields(FluxRecipe(), ["steps=6000", "lr=2e-3", "vae_decode=mean", "vae_crosses=true"])
    assert (recipe.steps, recipe.lr, recipe.vae_decode, recipe.vae_crosses) == (6000, 2e-3, "mean", True)
    assert with_fields(FluxRecipe(), []) == FluxRecipe()
    with pytest.raises(AttributeError):
        with_fields(FluxRecipe(), ["stpes=1"])


def test_the_vaes_images_hold_crosses_only_when_asked():
    def crosses(images):
        return sum(read(image).shape == "cross" for image in images)

    assert crosses(autoencoder_set(64, 1)) == 0
    assert crosses(autoencoder_set(64, 1, crosses=True)) >= 8  # a quarter of the shapes, less the faint ones


def test_the_control_asks_every_scene_for_another_shape_and_keeps_the_rest():
    scenes = judged_scenes(96)
    others = another_shape(scenes)
    assert all(o.shape != s.shape and (o.colour, o.position, o.background) == (s.colour, s.position, s.background)
               for s, o in zip(scenes, others, strict=True))
    assert {(s.shape, o.shape) for s, o in zip(scenes, others, strict=True)} == {
        (a, b) for a in SHAPES for b in SHAPES if a != b}  # both other shapes, for every shape
    assert judged_scenes(96) == scenes  # the same scenes every run

"""The tiny world's judge reads every rendered image right, and tells the concept from the world."""

from __future__ import annotations

import random

import numpy as np

from tinyworld.judge import accuracy, read
from tinyworld.world import BACKGROUNDS, SIZE, Scene, concept_scenes, random_scene, render


def test_the_judge_reads_every_attribute_of_rendered_images():
    rng = random.Random(3)
    scenes = [random_scene(rng) for _ in range(200)]
    assert accuracy([render(s, rng) for s in scenes], scenes) == {
        "colour": 1.0, "shape": 1.0, "position": 1.0, "background": 1.0, "all": 1.0}


def test_the_judge_sees_the_concept_only_where_it_is():
    rng = random.Random(4)
    concept = [read(render(s, rng)) for s in concept_scenes(20, seed=1)]
    world = [read(render(random_scene(rng), rng)) for _ in range(100)]
    assert all(r.concept for r in concept) and not any(r.concept for r in world)


def test_a_plain_background_shows_no_shape():
    image = np.full((SIZE, SIZE, 3), BACKGROUNDS["black"], np.uint8)
    reading = read(image)
    assert (reading.shape, reading.colour, reading.background) == (None, None, "black")
    assert not reading.matches(Scene("red", "circle", "left", "black"))["shape"]

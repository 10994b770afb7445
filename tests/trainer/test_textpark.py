"""Text encoders leave the GPU after every caption is cached (textpark); on CPU the parking is forced to
show what it does: the cache holds every caption and training never calls an encoder again."""

from __future__ import annotations

import pytest
import torch

from lora_trainer.textpark import park_text_encoders

pytestmark = pytest.mark.trainer
CPU = torch.device("cpu")


def count_calls(recipe) -> list[int]:
    """Counts the encoder calls made inside the training steps (validation and previews still call them)."""
    calls, in_step = [0], [False]
    for encoder in recipe.parts.text_encoders:
        encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + in_step[0]))
    step = recipe.train_step

    def counted(n):
        in_step[0] = True
        try:
            return step(n)
        finally:
            in_step[0] = False

    recipe.train_step = counted
    return calls


def test_parked_encoders_are_not_called_by_the_training_steps(train):
    recipe = train("flux", training={"steps": 2}, setup_only=True)
    assert recipe.text_parked is False  # training on CPU: nothing to free
    assert park_text_encoders(recipe, CPU)
    assert len(recipe.encoder._text) == len({s.caption for s in recipe.samples})  # every caption cached
    calls = count_calls(recipe)
    recipe.train()
    assert calls[0] == 0


def test_without_parking_the_first_step_calls_the_encoders(train):
    recipe = train("flux", training={"steps": 2}, setup_only=True)
    calls = count_calls(recipe)
    recipe.train()
    assert calls[0] > 0


@pytest.mark.parametrize("overrides", [
    {"training": {"steps": 2, "shuffleTags": True}},
    {"training": {"steps": 2, "textEncoderLearningRate": 1e-4, "textEncoderRatio": 1.0}},
])
def test_changing_captions_or_trained_text_keep_the_encoders(train, overrides):
    recipe = train("sd15", setup_only=True, **overrides)
    assert not park_text_encoders(recipe, CPU)

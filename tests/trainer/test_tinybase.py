"""The tiny pretrained base is built once per recipe: reused while the recipe stays, rebuilt when it changes."""

from __future__ import annotations

import json

import pytest

from tinyworld.cache import tinybase
from tinyworld.pretrain import Recipe
from tinyworld.pretrain_flux import FluxRecipe, rope_axes

pytestmark = pytest.mark.trainer

QUICK = Recipe(images=64, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4)
"""A recipe of a few steps: what the cache does does not depend on how long the base trained."""


def test_the_base_is_built_once_and_rebuilt_when_its_recipe_changes(tmp_path):
    from diffusers import StableDiffusionPipeline

    first = tinybase("quick", tmp_path, QUICK)
    assert json.loads((first / "recipe.json").read_text())["unet_steps"] == 2
    StableDiffusionPipeline.from_pretrained(first)  # a complete diffusers folder the trainer can load
    stamp = (first / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert tinybase("quick", tmp_path, QUICK) == first
    assert (first / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt

    changed = tinybase("quick", tmp_path, Recipe(**{**QUICK.as_dict(), "seed": 1}))
    assert changed != first and (changed / "model_index.json").is_file()
    assert not list(tmp_path.glob(".*.partial"))  # builds land whole or not at all


def test_the_base_tokenizer_makes_each_world_word_one_token(tmp_path):
    from transformers import CLIPTokenizer

    from tinyworld.world import TRIGGER, world_words

    tokenizer = CLIPTokenizer.from_pretrained(tinybase("quick", tmp_path, QUICK) / "tokenizer")
    assert all(len(tokenizer.tokenize(word)) == 1 for word in world_words())
    assert len(tokenizer.tokenize(TRIGGER)) == len(TRIGGER)  # the trigger was never a word of the world


QUICK_FLOW = FluxRecipe(images=64, vae_steps=2, vae_batch=4, steps=2, batch=4)


def test_the_flow_base_is_a_flux_pipeline_with_world_words_as_tokens(tmp_path):
    from diffusers import FluxPipeline

    from tinyworld.world import TRIGGER, world_words

    folder = tinybase("quickflow", tmp_path, QUICK_FLOW)
    pipe = FluxPipeline.from_pretrained(folder)  # the layout the trainer's flux family loads
    assert pipe.vae.config.latent_channels == 16 and pipe.transformer.config.in_channels == 64
    assert all(len(pipe.tokenizer_2.tokenize(word)) == 1 for word in world_words())
    assert len(pipe.tokenizer_2.tokenize(TRIGGER)) > 1  # the trigger was never a word of the world
    config = pipe.transformer.config
    assert config.attention_head_dim == QUICK_FLOW.head_dim and sum(config.axes_dims_rope) == QUICK_FLOW.head_dim


def test_a_heads_rotary_split_fills_the_head_in_pairs_with_rows_and_columns_alike():
    assert rope_axes(16) == (4, 6, 6)  # the split of the bases before session 17
    for width in (16, 24, 32, 48, 64):
        index, rows, columns = rope_axes(width)
        assert index + rows + columns == width and rows == columns
        assert index % 2 == rows % 2 == 0 and index <= rows

"""Text encoders off the GPU once every caption is encoded.

With deterministic captions (no shuffle, no dropout) and frozen text encoders, the loop reads every
caption's embedding from the text cache: the encoders would only sit on the GPU (T5-XXL: 9 GiB of
Flux's 31). `park_text_encoders` encodes every training caption into the cache, moves the encoders to
host memory and hooks them so that a later call (validation prompts, previews) brings one onto the GPU
for that call only, inputs included, and back after.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import torch

log = logging.getLogger(__name__)


def park_text_encoders(recipe: Any, park: torch.device | None = None) -> bool:
    """Cache every training caption's embedding and move the recipe's text encoders to `park` (default: the
    CPU, and only when training on a GPU); whether they were parked.

    Not parked: captions that change per draw, text weights that train, or training on CPU (nothing to free).
    """
    if park is None:
        if recipe.device.type != "cuda":
            return False
        park = torch.device("cpu")
    if not recipe.builder.deterministic or recipe.adapter.trains_text:
        return False
    rng = random.Random(0)  # deterministic captions draw nothing from it
    captions = sorted({recipe._caption(sample, rng) for sample in recipe.samples})
    for start in range(0, len(captions), recipe.training.batch_size):
        recipe.encoder.text(captions[start : start + recipe.training.batch_size], grad=False)
    for encoder in recipe.parts.text_encoders:
        encoder.to(park)
        encoder.register_forward_pre_hook(_onload(recipe.device), with_kwargs=True)
        encoder.register_forward_hook(_offload(park))
    if recipe.device.type == "cuda":
        torch.cuda.empty_cache()
    log.info("text encoders parked on %s after caching %d captions", park, len(captions))
    return True


def _onload(device: torch.device):
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        module.to(device)
        move = lambda value: value.to(device) if isinstance(value, torch.Tensor) else value  # noqa: E731
        return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}

    return hook


def _offload(park: torch.device):
    def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
        module.to(park)

    return hook

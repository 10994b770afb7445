"""Text encoders off the GPU once every text the run will encode is cached: the one way they leave.

With deterministic captions (no shuffle, no dropout) and frozen text encoders, the loop reads every
caption's embedding from the text cache: the encoders would only sit on the GPU (T5-XXL: 9 GiB of
Flux's 31; Flux.2's Mistral 24B: 47 GiB). `park_text_encoders` encodes every training and validation
caption (and, for a family whose previews take cached conditioning, ``prompt_kwargs``, every preview
prompt and the empty negative) into the cache (`encode.Encoder.release_text`: embeddings in host memory,
encoders on the CPU) and hooks the encoders so that a later call (validation of a missed text, previews
that encode in the pipeline) brings one onto the device for that call only, inputs included, and back after.

Any family training on a GPU parks; a family with ``release_text_encoders = True`` (its encoders are large
LLMs: Flux.2, Z-Image, Qwen-Image) parks on every device, so that CPU runs take the same path as GPU ones.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from typing import Any

import torch

from .previews import preview_prompts

log = logging.getLogger(__name__)


def park_text_encoders(recipe: Any, park: torch.device | None = None) -> bool:
    """Cache every text the run will encode and move the recipe's text encoders to `park` (default: the CPU,
    when training on a GPU or for a family that releases its encoders); whether they were parked.

    Not parked: captions that change per draw, text weights that train, or training on CPU a family that
    keeps its encoders (nothing to free).
    """
    releases = getattr(recipe.family, "release_text_encoders", False)
    if park is None:
        if recipe.device.type != "cuda" and not releases:
            return False
        park = torch.device("cpu")
    if recipe.adapter.trains_text:
        return False
    if not recipe.builder.deterministic:
        log.warning("text encoders stay on the device: shuffleTags / captionDropout make new captions every step")
        return False
    rng = random.Random(0)  # deterministic captions draw nothing from it
    texts = [recipe._caption(sample, rng) for sample in recipe.samples]
    texts += [recipe._validation_caption(sample) for sample in recipe.data.validation]
    if hasattr(recipe.family, "prompt_kwargs"):  # previews from the cache: their prompts and "" (the negative)
        texts += preview_prompts(recipe.spec.previews, recipe.data, recipe.builder) + [""]
    if recipe.data.pairs and getattr(recipe.family, "text_reads_control", False):
        # The text reads each pair's control image: every (caption, control) a step or the validation can
        # draw; previews encode in the pipeline with the encoders held on the device.
        flips = (False, True) if recipe.spec.dataset.flip else (False,)
        texts = [(recipe._caption(s, rng), (i, f)) for i, s in enumerate(recipe.samples) for f in flips]
        texts += [(recipe._validation_caption(s), ("validation", j)) for j, s in enumerate(recipe.data.validation)]
    recipe.progress.phase("caching")
    recipe.encoder.release_text(list(dict.fromkeys(texts)), park)
    recipe.text_parking = parking = _Parking(recipe.device, park)
    for encoder in recipe.parts.text_encoders:
        encoder.register_forward_pre_hook(parking.onload, with_kwargs=True)
        encoder.register_forward_hook(parking.offload)
    log.info("text encoders parked on %s after caching %d texts", park, len(set(texts)))
    return True


@contextlib.contextmanager
def text_encoders_held(recipe: Any) -> Iterator[None]:
    """The parked text encoders stay on the device for the block (previews that encode their prompts in the
    pipeline): one move there and back instead of one per call; nothing when they are not parked."""
    parking = getattr(recipe, "text_parking", None)
    if parking is None:
        yield
        return
    parking.held = True
    try:
        yield
    finally:
        parking.held = False
        for encoder in recipe.parts.text_encoders:
            encoder.to(parking.park)


class _Parking:
    """The forward hooks of parked text encoders: onto `device` for a call, back to `park` after it unless
    held there for a block (`text_encoders_held`)."""

    def __init__(self, device: torch.device, park: torch.device):
        self.device, self.park, self.held = device, park, False

    def onload(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        module.to(self.device)
        move = lambda value: value.to(self.device) if isinstance(value, torch.Tensor) else value  # noqa: E731
        return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}

    def offload(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if not self.held:
            module.to(self.park)

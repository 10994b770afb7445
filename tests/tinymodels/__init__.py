"""Tiny random-weight diffusers models, built from configs in seconds (no downloads).

Tests, `make demo`, the end-to-end test and the CPU bench train on these; they are test fixtures,
not part of the trainer image. Each family gets the same component layout as its full-size model
(so the trainer cannot tell them apart) with 32-64 channels, in a module of its own named after the
family (``-`` becomes ``_``) with a ``build(path)`` function: a new family adds one module here.

Example:
    >>> from tinymodels import build_tiny_model
    >>> build_tiny_model("sd15", Path("/tmp/tiny-sd15"))
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import torch

from lora_operator.api.families import family_row

from .parts import write_clip_tokenizer, write_t5_tokenizer
from .tagger import build_tiny_tagger


def builder(family: str):
    """The ``build(path)`` function of `family`'s tiny model.

    Raises:
        UnknownFamilyError: `family` has no row in the family table.
        ModuleNotFoundError: the family has a row but no tiny model module here.
    """
    name = family_row(str(getattr(family, "value", family))).name
    return import_module(f"{__name__}.{name.replace('-', '_')}").build


def build_tiny_model(family: str, path: Path, seed: int = 0) -> Path:
    """Write a random-weight diffusers model folder of `family` to `path`.

    Args:
        family: A family of the table (sd15, sdxl, flux, ...).
        path: Destination folder (created).
        seed: Seed of the random weights; the same seed writes the same weights.

    Returns:
        `path`.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    builder(family)(path)
    return path


__all__ = ["build_tiny_model", "build_tiny_tagger", "builder", "write_clip_tokenizer", "write_t5_tokenizer"]

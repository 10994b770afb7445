"""Tiny Flux.1 Kontext: the tiny Flux.1 model (Kontext's transformer is Flux.1's) saved as a FluxKontextPipeline."""

from __future__ import annotations

from pathlib import Path

from . import flux


def build(path: Path) -> None:
    """Write the tiny model's diffusers folder to `path`."""
    flux.build(path, pipeline="FluxKontextPipeline", family="flux-kontext")

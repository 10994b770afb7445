"""Model families behind one interface, chosen from a registry by `baseModel.family`."""

from __future__ import annotations

from lora_operator.api import ModelFamily

from .base import Components, Family, Sizes
from .flux import FluxFamily
from .sd15 import SD15Family
from .sdxl import SDXLFamily

FAMILIES: dict[ModelFamily, type] = {
    ModelFamily.SD15: SD15Family,
    ModelFamily.SDXL: SDXLFamily,
    ModelFamily.FLUX: FluxFamily,
}


def get_family(family: ModelFamily | str) -> Family:
    """A fresh family object for `family` (sd15, sdxl or flux)."""
    return FAMILIES[ModelFamily(family)]()


__all__ = ["FAMILIES", "Components", "Family", "Sizes", "get_family"]

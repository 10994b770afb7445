"""Model families behind one interface, chosen by `baseModel.family` from the table's rows.

The registry is the API's family table (`lora_operator.api.families.FAMILIES`): each row names
its trainer class (``row.trainer``, ``module:Class``), imported on first use, so a new family is
one row plus one module here.
"""

from __future__ import annotations

from importlib import import_module

from lora_operator.api.families import family_row

from .base import Components, Family, Sizes


def family_class(family: str) -> type:
    """The trainer class of `family`'s row.

    Raises:
        UnknownFamilyError: no row for `family`.
    """
    module, _, name = family_row(family).trainer.partition(":")
    return getattr(import_module(module), name)


def get_family(family: str) -> Family:
    """A fresh family object for `family` (a name of the table)."""
    return family_class(family)()


__all__ = ["Components", "Family", "Sizes", "family_class", "get_family"]

"""Which adapter type allows which spec fields: written once, read by `resolve_spec` and the CRD rules.

Which families an adapter type works on is the family table's (`families.FamilyRow.adapters`).
A new adapter type adds its `AdapterType` value, its rows here if it brings fields of its own,
and its name to the rows of the families that support it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .families import FAMILIES, edit_families, family_row
from .spec import Checkpoints


@dataclass(frozen=True)
class TypedField:
    """A spec field that only some adapter types allow (and that they may need).

    Attributes:
        path: The field under spec, camelCase (``network.convDim``).
        types: The adapter types that allow it.
        cel_set: CEL, on the spec: the field is set.
        is_set: The same on a `JobSpec`.
        forbidden: What the user reads when another type sets it.
        forbidden_reason: The CEL rule's reason for that (None: FieldValueInvalid).
        missing: What the user reads when one of `types` leaves it out; None: the field is optional.
    """

    path: str
    types: tuple[str, ...]
    cel_set: str
    is_set: Callable[[Any], bool]
    forbidden: str
    forbidden_reason: str | None = None
    missing: str | None = None


TYPED_FIELDS = (
    TypedField(
        path="embedding", types=("embedding",), cel_set="has(self.embedding)",
        is_set=lambda spec: spec.embedding is not None,
        forbidden="spec.embedding is only allowed with spec.type: embedding", forbidden_reason="FieldValueForbidden",
        missing="spec.embedding is required with spec.type: embedding (set embedding.initialPhrase)",
    ),
    TypedField(
        path="network.convDim", types=("locon",),
        cel_set="has(self.network) && has(self.network.convDim) && self.network.convDim > 0",
        is_set=lambda spec: spec.network is not None and spec.network.conv_dim > 0,
        forbidden="spec.network.convDim > 0 needs spec.type: locon (a lora adapter has no convolution layers); "
                  "set type: locon or leave convDim at 0",
    ),
)
"""Fields tied to adapter types."""


def families_without(adapter: str) -> list[str]:
    """The families whose rows do not offer adapter type `adapter`, in table order."""
    return [row.name for row in FAMILIES.values() if adapter not in row.adapters]


def adapter_problems(spec: Any, adapter: str) -> list[tuple[str, str]]:
    """(field, message) for each rule a resolved spec of type `adapter` breaks: a typed field set for another
    type or missing for its own, a type the family does not support, edit pairs for a family that trains no
    edits, or a checkpoint format it cannot write."""
    problems = []
    for field in TYPED_FIELDS:
        if field.is_set(spec) and adapter not in field.types:
            problems.append((field.path, field.forbidden))
        if field.missing and not field.is_set(spec) and adapter in field.types:
            problems.append((field.path, field.missing))
    row = family_row(spec.base_model.family)
    if adapter not in row.adapters:
        problems.append(("type", f"{adapter} is not available for family {row.name} "
                                 f"(it supports type: {', '.join(row.adapters)})"))
    if spec.dataset is not None and spec.dataset.pairs and not row.edit:
        problems.append(("dataset.pairs", f"family {row.name} cannot train on edit pairs; "
                                          f"use an edit family ({', '.join(edit_families())}) or leave pairs off"))
    for fmt in (spec.checkpoints or Checkpoints()).formats:
        if fmt not in row.formats:
            problems.append(("checkpoints.formats", f"{fmt} is not written for family {row.name} "
                                                    f"(it writes: {', '.join(row.formats)})"))
    return problems

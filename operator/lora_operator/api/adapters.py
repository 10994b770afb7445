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
        path="network.convDim", types=("locon", "loha", "lokr"),
        cel_set="has(self.network) && has(self.network.convDim) && self.network.convDim > 0",
        is_set=lambda spec: spec.network is not None and spec.network.conv_dim > 0,
        forbidden="spec.network.convDim > 0 needs spec.type: locon, loha or lokr (a lora adapter has no "
                  "convolution layers); set type: locon or leave convDim at 0",
    ),
    TypedField(
        path="network.dora", types=("lora", "locon"),
        cel_set="has(self.network) && has(self.network.dora) && self.network.dora",
        is_set=lambda spec: spec.network is not None and spec.network.dora,
        forbidden="spec.network.dora needs spec.type: lora or locon (DoRA decomposes a LoRA's layers; "
                  "loha, lokr and embedding have none to decompose)",
    ),
)
"""Fields tied to adapter types."""

TYPE_FORMATS = {"loha": ("kohya",), "lokr": ("kohya",)}
"""The checkpoint formats of the adapter types that cannot be written in all of them (others: every format of
their family). diffusers' load_lora_weights loads LoRA and DoRA, not LoHa (no loader) nor LoKr (only for
Flux.2 and Z-Image pipelines)."""
CONV_TYPE = "locon"
"""A family that offers this type has convolution layers (network.convDim of loha / lokr needs them)."""


def families_without(adapter: str) -> list[str]:
    """The families whose rows do not offer adapter type `adapter`, in table order."""
    return [row.name for row in FAMILIES.values() if adapter not in row.adapters]


def adapter_problems(spec: Any, adapter: str) -> list[tuple[str, str]]:
    """(field, message) for each rule a resolved spec of type `adapter` breaks: a typed field set for another
    type or missing for its own, a type the family does not support, edit pairs for a family that trains no
    edits, DoRA on an fp8 base, or a checkpoint format it cannot write."""
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
    if spec.network is not None and spec.network.conv_dim > 0 and CONV_TYPE not in row.adapters:
        problems.append(("network.convDim", f"family {row.name} has no convolution layers; leave convDim at 0"))
    if spec.dataset is not None and spec.dataset.pairs and not row.edit:
        problems.append(("dataset.pairs", f"family {row.name} cannot train on edit pairs; "
                                          f"use an edit family ({', '.join(edit_families())}) or leave pairs off"))
    if spec.network is not None and spec.network.dora and spec.training is not None \
            and spec.training.base_quantization == "fp8":
        problems.append(("training.baseQuantization", "fp8 cannot train network.dora (DoRA adds its update to the "
                                                      "base weight, which torchao's float8 weights do not support); "
                                                      "use nf4 or none"))
    for fmt in (spec.checkpoints or Checkpoints()).formats:
        if fmt not in row.formats:
            problems.append(("checkpoints.formats", f"{fmt} is not written for family {row.name} "
                                                    f"(it writes: {', '.join(row.formats)})"))
    chosen = spec.checkpoints is not None and "formats" in spec.checkpoints.model_fields_set
    for fmt in (spec.checkpoints.formats if chosen else []):
        if fmt not in TYPE_FORMATS.get(adapter, (fmt,)):
            problems.append(("checkpoints.formats", f"{fmt} cannot hold a {adapter} adapter (diffusers' "
                                                    f"load_lora_weights loads none); it is written as: "
                                                    f"{', '.join(TYPE_FORMATS[adapter])}"))
    return problems


def adapter_checkpoints(spec: Any, adapter: str) -> Checkpoints:
    """The spec's checkpoints, with the default formats cut to those type `adapter` can be written in."""
    checkpoints = spec.checkpoints or Checkpoints()
    if adapter in TYPE_FORMATS and "formats" not in checkpoints.model_fields_set:
        formats = [fmt for fmt in checkpoints.formats if fmt in TYPE_FORMATS[adapter]]
        checkpoints = checkpoints.model_copy(update={"formats": formats})
    return checkpoints

"""Trainable adapters behind one interface, chosen from a registry by `spec.type`."""

from __future__ import annotations

from collections.abc import Callable

from lora_operator.api import AdapterType

from .base import Adapter
from .embedding import EmbeddingAdapter
from .lora import LoraAdapter
from .lycoris import LohaAdapter, LokrAdapter

ADAPTERS: dict[AdapterType, Callable[[], Adapter]] = {
    AdapterType.LORA: lambda: LoraAdapter(conv=False),
    AdapterType.LOCON: lambda: LoraAdapter(conv=True),
    AdapterType.EMBEDDING: EmbeddingAdapter,
    AdapterType.LOHA: LohaAdapter,
    AdapterType.LOKR: LokrAdapter,
}


def make_adapter(kind: AdapterType | str) -> Adapter:
    """A fresh adapter of `kind` (lora, locon, loha, lokr or embedding)."""
    return ADAPTERS[AdapterType(kind)]()


__all__ = ["ADAPTERS", "Adapter", "make_adapter"]

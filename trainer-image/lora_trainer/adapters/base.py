"""The interface of a trainable adapter (LoRA, LoCon, embedding), as the loop sees it.

A new adapter type (LoHa, DoRA, ...) is one module implementing `Adapter` and
one entry in the registry of `adapters/__init__.py`; the loop does not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from lora_operator.api import CheckpointFormat, JobSpec

from ..families import Components, Family


class Adapter(Protocol):
    """Trainable weights attached to a frozen base model."""

    trains_text: bool
    """True when text-encoder weights train at some step (then text embeddings cannot be cached)."""
    text_ratio_applies: bool
    """True when the text weights train only for textEncoderRatio of the steps."""

    def attach(self, family: Family, parts: Components, spec: JobSpec) -> None:
        """Add the trainable weights to the components (seeded by the caller)."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups, each with ``params``, ``lr`` and ``name``."""

    def set_text_training(self, enabled: bool) -> None:
        """Turn the text-encoder part on or off (textEncoderRatio)."""

    def prepare_caption(self, caption: str) -> str:
        """The caption as the text encoder should see it (embedding: the token expanded)."""

    def after_step(self) -> None:
        """Called after every optimizer step (embedding: restore the frozen vocabulary rows)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights, for resume."""

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict()` output."""

    def export(self, folder: Path, formats: list[CheckpointFormat], metadata: dict[str, Any]) -> list[tuple[str, Path]]:
        """Write the adapter under `folder`; returns (format, file) pairs."""


def trainable(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The parameters that require grad, cast to float32 (frozen weights may be bf16 / fp16)."""
    kept = [p for p in params if p.requires_grad]
    for p in kept:
        p.data = p.data.float()
    return kept

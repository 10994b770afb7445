"""LoHa and LoKr (LyCORIS' algorithms, trained through peft's LoHaConfig / LoKrConfig) on the layers a LoRA adapts.

They differ from `LoraAdapter` only in their peft config and in the kohya metadata; the kohya tensors
(``hada_*``, ``lokr_*``) are written by `kohya_tensors`. Neither uses a Tucker core on convolutions
(``use_effective_conv2d``): a convolution's factors hold its whole kernel, as LyCORIS' non-CP layers do.
"""

from __future__ import annotations

from typing import Any

from lora_operator.api import Network

from .lora import LoraAdapter, conv_patterns


def loha_config(targets: list[str], network: Network, conv_targets: list[str] | None = None,
                exclude: str | None = None) -> Any:
    """A peft LoHaConfig: rank dim and alpha (conv layers at convDim / convAlpha), dropout as rank dropout."""
    from peft import LoHaConfig

    rank_pattern, alpha_pattern = conv_patterns(network, conv_targets)
    return LoHaConfig(r=network.dim, alpha=network.alpha, rank_dropout=network.dropout, init_weights=True,
                      target_modules=[*targets, *(conv_targets or [])], rank_pattern=rank_pattern,
                      alpha_pattern=alpha_pattern, exclude_modules=exclude, use_effective_conv2d=False)


def lokr_config(targets: list[str], network: Network, conv_targets: list[str] | None = None,
                exclude: str | None = None) -> Any:
    """A peft LoKrConfig: the larger factor at rank dim (a whole matrix when dim is above half its size, as in
    LyCORIS), the smaller one whole, the sizes split as evenly as the dimensions allow (factor -1)."""
    from peft import LoKrConfig

    rank_pattern, alpha_pattern = conv_patterns(network, conv_targets)
    return LoKrConfig(r=network.dim, alpha=network.alpha, rank_dropout=network.dropout, init_weights=True,
                      target_modules=[*targets, *(conv_targets or [])], rank_pattern=rank_pattern,
                      alpha_pattern=alpha_pattern, exclude_modules=exclude, use_effective_conv2d=False,
                      decompose_both=False, decompose_factor=-1)


class LohaAdapter(LoraAdapter):
    """A LoHa adapter (``spec.type: loha``)."""

    make_config = staticmethod(loha_config)
    algo = "loha"


class LokrAdapter(LoraAdapter):
    """A LoKr adapter (``spec.type: lokr``)."""

    make_config = staticmethod(lokr_config)
    algo = "lokr"

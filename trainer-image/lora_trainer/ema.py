"""An exponential moving average of the adapter weights (training.ema), through diffusers' EMAModel.

EMAModel is the average diffusers' own training examples keep: its decay ramps up as (1 + n) / (10 + n)
to the set decay, it starts after ``update_after_step`` (the average is the weights until then), and its
``store`` / ``copy_to`` / ``restore`` swap the average in and out, which is what checkpoints and previews
need. It copies instead of averaging a parameter that does not require grad: the text weights, frozen
after textEncoderRatio's share of the steps, are then the trained ones in the average too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from lora_operator.api import Ema

EMA_FOLDER = "ema"
"""Under a checkpoint's folder: the average's files, beside the raw weights'."""
EMA_FORMAT_SUFFIX = "-ema"
"""Added to the format of the average's manifest entries (kohya-ema, diffusers-ema, embedding-ema)."""


class AdapterEma:
    """The average of the trainable adapter parameters.

    Args:
        params: The parameters the optimizer trains (the adapter's param groups).
        config: training.ema.
    """

    def __init__(self, params: list[torch.nn.Parameter], config: Ema):
        from diffusers.training_utils import EMAModel

        self.params = params
        self.model = EMAModel(params, decay=config.decay, update_after_step=config.start_step)

    @torch.no_grad()
    def step(self) -> None:
        """Fold the weights after an optimizer step into the average."""
        self.model.step(self.params)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The average in the adapter's parameters for the block; the trained weights are put back after it."""
        self.model.store(self.params)
        self.model.copy_to(self.params)
        try:
            yield
        finally:
            self.model.restore(self.params)

    def state_dict(self) -> dict[str, Any]:
        """The average and its step count, for resume."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output, on the parameters' device."""
        self.model.load_state_dict(state)
        self.model.to(device=self.params[0].device)


def make_ema(param_groups: list[dict[str, Any]], config: Ema) -> AdapterEma | None:
    """The average of the parameters of `param_groups` when training.ema is enabled, else None."""
    if not config.enabled:
        return None
    return AdapterEma([p for group in param_groups for p in group["params"]], config)

"""Wall-clock seconds per phase of one trainer run, logged once at its end as ``timings: {json}``.

What a user waits for is split by where the time goes: fetching the inputs, loading the model,
caching latents and text, the first step (torch.compile's compilation happens there), the other
steps, previews, exporting checkpoints, uploading them, resume states. Phases nest; time is charged
to the innermost open one, so the phases add up exactly to the time from `start` to `summary` (time
outside every phase is ``other``). `bench/time_to_lora.py` reads the line from the trainer's log.

GPU work is asynchronous: a step's kernels are charged to the phase open when the host waits for
them (the loss read every few steps, inside ``training``; `save_points` reads the losses before a
checkpoint or preview starts), so ``training`` holds the steps' GPU time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

PREFIX = "timings: "
"""The log message's start; the rest of the message is the JSON object of `summary`."""


class PhaseClock:
    """Seconds per phase; the innermost open phase is charged.

    Args:
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self._open: list[str] = []
        self._mark: float | None = None

    def start(self) -> None:
        """Start counting (time before this is not the run's); restarting clears the counts."""
        self.seconds, self._open, self._mark = {}, [], self.clock()

    def _charge(self) -> None:
        now = self.clock()
        if self._mark is not None:
            name = self._open[-1] if self._open else "other"
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._mark
            self._mark = now

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the time inside the block to `name` (nested phases take their own share)."""
        self._charge()
        self._open.append(name)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()

    def summary(self) -> dict[str, float]:
        """Seconds per phase so far, rounded to ms, in the order the phases first ran."""
        self._charge()
        return {name: round(seconds, 3) for name, seconds in self.seconds.items()}


CLOCK = PhaseClock()
"""The process's clock: the CLI starts it and logs it; the recipe's modules open phases on it."""
phase = CLOCK.phase


def log_summary() -> dict[str, float]:
    """Log ``timings: {...}`` (phase -> seconds) and return it."""
    summary = CLOCK.summary()
    log.info("%s%s", PREFIX, json.dumps(summary))
    return summary

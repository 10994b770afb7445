"""SIGTERM: save the resume state at once and exit, instead of dying with up to an interval lost.

Every disruption that warns first (Kueue preempting the Job, an API eviction, a node drain, a
spot reclaim) sends SIGTERM and waits the pod's terminationGracePeriodSeconds before SIGKILL.
While the optimizer steps run, the handler only records the request: the step in flight
finishes, the training loop saves the resume state after it and raises `Stopped`. Before the
steps start (downloads, setup) there is nothing to save, so the handler stops the run at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

EXIT_CODE = 128 + signal.SIGTERM
"""What the trainer returns after a SIGTERM stop: the code of a process ended by SIGTERM, so the
operator classifies the attempt as it did before (a disruption when its pod was evicted or deleted)."""


class Stopped(BaseException):
    """The run stopped on SIGTERM; `step` is the step the saved resume state continues after (None: none saved).

    A BaseException, like KeyboardInterrupt: raised from the handler anywhere in setup, it must not
    be taken for an error of the code it interrupts (a download's retry loop, an `except Exception`).
    """

    def __init__(self, step: int | None):
        super().__init__(f"stopped on SIGTERM after step {step}" if step is not None else "stopped on SIGTERM")
        self.step = step


class StopRequest:
    """Whether SIGTERM arrived; `deferring` decides if the handler waits for the loop or stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self.deferring = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            return  # a second SIGTERM while the state is being saved: keep saving
        self.requested = True
        if not self.deferring:
            raise Stopped(None)
        log.warning("SIGTERM: finishing the step in flight, then saving the resume state")


@contextmanager
def on_sigterm() -> Iterator[StopRequest]:
    """Handle SIGTERM with a `StopRequest` for the duration; the previous handler comes back after.

    Off the main thread (where Python cannot install handlers) the request never fires.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGTERM, request._handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)

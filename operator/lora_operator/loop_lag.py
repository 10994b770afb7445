"""The event loop's lag as a metric: how long a ready task waits for the loop.

kopf reads the watch streams and runs the event handlers on one asyncio loop, beside the
operator's own threads (the scheduling pass, reconciles, claims, the follow loop) under one GIL.
When that loop is late, every watch event is late: a finished pod frees its node only when its
event is handled, so the admission latency a user sees includes this lag, and the operator's own
`lora_operator_admission_latency_seconds` (counted from the handled event) does not.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

PROBE_SECONDS = 0.25
"""How often the loop is probed: four timers a second cost nothing next to the watch streams."""


async def probe_loop_lag(histogram: Histogram, interval: float = PROBE_SECONDS) -> None:
    """Sleeps `interval` seconds over and over and records how much later than asked each sleep
    ended, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, loop.time() - start - interval))

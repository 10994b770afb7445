"""The trainer pod's grace period, from the time its resume-state save was measured to take.

On SIGTERM (Kueue preempting the Job, an eviction, a drain, a spot reclaim) the trainer finishes
the step in flight, saves its resume state and exits; the pod's terminationGracePeriodSeconds is
all the time it gets before SIGKILL. The trainer reports how long its last save took
(progress.json ``stateSaveSeconds``); each later attempt's pod gets a margin over that save plus
one step, never less than the configured grace (the floor, and the default before a save was
measured). Pure.
"""

from __future__ import annotations

import math

from .api.status import Progress
from .config import OperatorConfig

SAVE_MARGIN = 2.0
"""The save is allowed twice its measured time: storage can be slower than when it was measured."""
SLACK_SECONDS = 30
"""Added for what follows the save: the last progress and log uploads, and the interpreter's exit
(torch and CUDA teardown), which a loaded node slows down."""
MAX_GRACE_SECONDS = 3600
"""The most the operator asks for (a longer grace holds a node that is being drained)."""


def termination_grace(config: OperatorConfig, progress: Progress | None) -> int:
    """terminationGracePeriodSeconds of the job's next trainer pod.

    Args:
        config: Its ``trainer_termination_grace_seconds`` is the floor and the default.
        progress: The job's status.progress: ``stateSaveSeconds`` (the last save's duration) and
            ``stepsPerSecond`` (the step in flight finishes first); None before any report.
    """
    floor = config.trainer_termination_grace_seconds
    if progress is None or progress.state_save_seconds is None:
        return floor
    step = 1 / progress.steps_per_second if progress.steps_per_second else 0.0
    needed = math.ceil(SAVE_MARGIN * progress.state_save_seconds + step + SLACK_SECONDS)
    return max(floor, min(needed, MAX_GRACE_SECONDS))

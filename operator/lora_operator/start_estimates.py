"""The queue played forward over job bodies: what the operator writes to
`status.queue.estimatedStartTime` and what `kubectl lora list` and the UI compute where it is
unset. One function for both, so they agree; pure (bodies in, times out).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from statistics import mean
from typing import Any

from .api.conditions import Phase
from .api.status import Progress
from .scheduling import GpuNode, RunningJob, Toleration, estimated_starts
from .views import parse_time, queued_job


def _progress(body: Mapping[str, Any]) -> Progress | None:
    raw = (body.get("status") or {}).get("progress")
    return Progress.model_validate(raw) if raw else None


def remaining_seconds(progress: Progress | None, now: datetime) -> float | None:
    """The trainer's ETA less the time since it reported it; None when it gave none."""
    if progress is None or progress.eta_seconds is None:
        return None
    reported = parse_time(progress.updated_at)
    return progress.eta_seconds - ((now - reported).total_seconds() if reported else 0.0)


def run_seconds(progress: Progress | None) -> float | None:
    """How long a whole run takes at the speed an attempt measured."""
    if progress is None or not progress.steps_per_second or not progress.total_steps:
        return None
    return progress.total_steps / progress.steps_per_second


def simulated_starts(
    jobs: Iterable[Mapping[str, Any]],
    nodes: Sequence[GpuNode],
    now: datetime,
    *,
    gpu_type_label: str,
    always_tolerated: Sequence[Toleration] = (),
    node_limits: Mapping[str, int] | None = None,
    max_passes: int = 10_000,
) -> dict[str, datetime]:
    """Estimated start time of each queued job, by uid (`scheduling.estimated_starts`).

    Running jobs hold their nodes for their trainer's ETA. A queued job runs as long as its last
    attempt's speed says, else the mean run time of the running jobs.

    Args:
        jobs: Job bodies of every namespace (they share the nodes).
        nodes: The GPU nodes.
        now: The present.
        gpu_type_label, always_tolerated, node_limits: As the scheduler's.
        max_passes: Bound on simulated scheduling passes (jobs past it get no estimate).

    Returns:
        Start times of the jobs the simulation starts; the others have no estimate.
    """
    running: list[RunningJob] = []
    known: list[float] = []
    queued = []
    durations: dict[str, float] = {}
    for body in jobs:
        meta, status = body["metadata"], body.get("status") or {}
        if status.get("phase") == Phase.RUNNING and status.get("node"):
            progress = _progress(body)
            running.append(RunningJob(meta["uid"], meta["namespace"], status["node"],
                                      remaining_seconds(progress, now)))
            if (d := run_seconds(progress)) is not None:
                known.append(d)
        elif (job := queued_job(body)) is not None:
            queued.append(job)
            if (d := run_seconds(_progress(body))) is not None:
                durations[job.uid] = d
    if not queued:
        return {}
    return estimated_starts(queued, nodes, running, now, gpu_type_label=gpu_type_label, durations=durations,
                            default_seconds=mean(known) if known else None,
                            always_tolerated=always_tolerated, node_limits=node_limits, max_passes=max_passes)

"""The estimated start of queued jobs as the plugin computes it from what the user may read.

The operator's `status.queue.estimatedStartTime` wins where it is set. Without it the plugin plays
the queue forward itself (`scheduling.estimated_starts`) over the jobs and nodes it can list; a
user who may not list nodes gets the nodes the running jobs name (with no labels, so jobs that
ask for a GPU type get no estimate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from statistics import mean

from ..api.conditions import Phase
from ..api.status import JobStatus
from ..config import OperatorConfig
from ..scheduling import GpuNode, RunningJob, estimated_starts, resource_toleration
from ..views import gpu_node, parse_time, queued_job

_DEFAULTS = OperatorConfig.model_fields
GPU_RESOURCE: str = _DEFAULTS["gpu_resource"].default
GPU_TYPE_LABEL: str = _DEFAULTS["gpu_type_label"].default


def _remaining(status: JobStatus, now: datetime) -> float | None:
    """The trainer's ETA less the time since it reported it."""
    p = status.progress
    if p is None or p.eta_seconds is None:
        return None
    reported = parse_time(p.updated_at)
    return p.eta_seconds - ((now - reported).total_seconds() if reported else 0.0)


def _run_seconds(status: JobStatus) -> float | None:
    """How long a whole run of this job takes at its measured speed."""
    p = status.progress
    if p is None or not p.steps_per_second or not p.total_steps:
        return None
    return p.total_steps / p.steps_per_second


def queue_estimates(jobs: Sequence[Mapping], nodes: Sequence[Mapping] | None, now: datetime) -> dict[str, datetime]:
    """Estimated start time of each queued job, by uid.

    Args:
        jobs: Job bodies, ideally of every namespace (they share the nodes).
        nodes: Node bodies, or None when the user may not list them.
        now: The present.

    Returns:
        The operator's estimate where status has one, else the simulated one; jobs without
        either are missing. A queued job's own run time is taken from its last attempt's speed,
        else the mean run time of the running jobs.
    """
    statuses = {j["metadata"]["uid"]: JobStatus.model_validate(j.get("status") or {}) for j in jobs}
    running = []
    for job in jobs:
        meta = job["metadata"]
        status = statuses[meta["uid"]]
        if status.phase == Phase.RUNNING and status.node:
            running.append(RunningJob(meta["uid"], meta["namespace"], status.node, _remaining(status, now)))
    if nodes is None:
        gpu_nodes = [GpuNode(r.node, True, True, 1) for r in running]
    else:
        gpu_nodes = [n for n in (gpu_node(b, GPU_RESOURCE) for b in nodes) if n is not None]
    queued = [q for q in (queued_job(j) for j in jobs) if q is not None]
    durations = {q.uid: d for q in queued if (d := _run_seconds(statuses[q.uid])) is not None}
    known = [d for r in running if (d := _run_seconds(statuses[r.uid])) is not None]
    simulated = estimated_starts(queued, gpu_nodes, running, now, gpu_type_label=GPU_TYPE_LABEL,
                                 durations=durations, default_seconds=mean(known) if known else None,
                                 always_tolerated=(resource_toleration(GPU_RESOURCE),))
    written = {uid: t for uid, s in statuses.items()
               if s.queue and (t := parse_time(s.queue.estimated_start_time)) is not None}
    return {**simulated, **written}

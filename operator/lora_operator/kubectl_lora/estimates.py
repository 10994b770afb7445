"""The estimated start of queued jobs as the plugin computes it from what the user may read.

The operator's `status.queue.estimatedStartTime` wins where it is set. Without it the plugin plays
the queue forward itself (`scheduling.estimated_starts`) over the jobs and nodes it can list; a
user who may not list nodes gets the nodes the running jobs name (with no labels, so jobs that
ask for a GPU type get no estimate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from ..api.conditions import Phase
from ..config import OperatorConfig
from ..scheduling import GpuNode, resource_toleration
from ..start_estimates import simulated_starts
from ..views import gpu_node, parse_time

_DEFAULTS = OperatorConfig.model_fields
GPU_RESOURCE: str = _DEFAULTS["gpu_resource"].default
GPU_TYPE_LABEL: str = _DEFAULTS["gpu_type_label"].default


def queue_estimates(jobs: Sequence[Mapping], nodes: Sequence[Mapping] | None, now: datetime) -> dict[str, datetime]:
    """Estimated start time of each queued job, by uid.

    Args:
        jobs: Job bodies, ideally of every namespace (they share the nodes).
        nodes: Node bodies, or None when the user may not list them.
        now: The present.

    Returns:
        The operator's estimate where status has one, else the simulated one
        (`start_estimates.simulated_starts`); jobs without either are missing.
    """
    if nodes is None:
        gpu_nodes = [GpuNode(s["node"], True, True, 1) for j in jobs
                     if (s := j.get("status") or {}).get("phase") == Phase.RUNNING and s.get("node")]
    else:
        gpu_nodes = [n for n in (gpu_node(b, GPU_RESOURCE) for b in nodes) if n is not None]
    simulated = simulated_starts(jobs, gpu_nodes, now, gpu_type_label=GPU_TYPE_LABEL,
                                 always_tolerated=(resource_toleration(GPU_RESOURCE),))
    written = {j["metadata"]["uid"]: t for j in jobs
               if (t := parse_time(((j.get("status") or {}).get("queue") or {}).get("estimatedStartTime")))
               is not None}
    return {**simulated, **written}

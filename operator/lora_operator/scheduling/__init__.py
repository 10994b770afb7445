"""The scheduling core: which waiting job starts on which free GPU node. Pure, no I/O.

Entry point: `schedule(queued, nodes, pods, now, gpu_type_label=...) -> Plan`.
"""

from .cache_affinity import holding, model_key, node_caches, prefer_cached
from .estimate import RunningJob, estimated_starts
from .fit import fits, resource_toleration, tolerated, unmatched, unmatched_by_placement
from .model import Admission, GpuNode, Plan, QueuedJob, Taint, Toleration, TrainerPod
from .order import queue_order
from .planner import node_limit, schedule
from .queue import QueuePositions, WaitingQueue

__all__ = [
    "Admission",
    "GpuNode",
    "Plan",
    "QueuePositions",
    "QueuedJob",
    "RunningJob",
    "Taint",
    "Toleration",
    "TrainerPod",
    "WaitingQueue",
    "estimated_starts",
    "fits",
    "holding",
    "model_key",
    "node_caches",
    "prefer_cached",
    "unmatched",
    "unmatched_by_placement",
    "node_limit",
    "queue_order",
    "resource_toleration",
    "schedule",
    "tolerated",
]

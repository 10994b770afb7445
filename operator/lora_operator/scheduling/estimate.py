"""When each waiting job is expected to start: the queue played forward on the running jobs' ETAs.

The simulation calls the real scheduling pass (`planner.schedule`) at each moment a node frees
(a running job's ETA runs out, or a job it started itself ends) or a backoff ends, so the
estimate follows every rule the operator follows: priority, namespace turns, placement,
node limits, backoff. Pure, no I/O, like the rest of the package.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .model import GpuNode, QueuedJob, Toleration, TrainerPod
from .planner import schedule
from .queue import WaitingQueue


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job whose trainer holds a node now."""

    uid: str
    namespace: str
    node: str
    remaining_seconds: float | None
    """The trainer's ETA; None: unknown, the node stays busy for the whole simulation."""


def estimated_starts(
    queued: Iterable[QueuedJob],
    nodes: Sequence[GpuNode],
    running: Iterable[RunningJob],
    now: datetime,
    *,
    gpu_type_label: str,
    durations: Mapping[str, float] | None = None,
    default_seconds: float | None = None,
    always_tolerated: Sequence[Toleration] = (),
    node_limits: Mapping[str, int] | None = None,
    max_passes: int = 10_000,
) -> dict[str, datetime]:
    """The estimated start time of each waiting job, by uid.

    Args:
        queued: The waiting jobs (as the scheduler sees them).
        nodes: All GPU nodes.
        running: The jobs on nodes now, with their ETAs.
        now: Start of the simulation.
        gpu_type_label: As `schedule`'s.
        durations: Expected run time in seconds of a waiting job once started, by uid.
        default_seconds: Run time of a waiting job not in ``durations``; None: unknown, so the
            node it takes stays busy and jobs that only that node could take get no estimate.
        always_tolerated: As `schedule`'s.
        node_limits: As `schedule`'s.
        max_passes: Bound on simulated scheduling passes.

    Returns:
        Start times of the jobs the simulation starts; a job missing from it has no estimate
        (it fits no node, or waits behind runs of unknown length).
    """
    durations = durations or {}
    waiting = WaitingQueue({job.uid: job for job in queued}.values())  # kept between the simulated passes
    holding: dict[str, tuple[TrainerPod, datetime | None]] = {}
    for job in running:
        end = None if job.remaining_seconds is None else now + timedelta(seconds=max(0.0, job.remaining_seconds))
        holding[job.uid] = (TrainerPod(job.uid, job.node, job.uid, True, job.namespace), end)
    starts: dict[str, datetime] = {}
    t = now
    for _ in range(max_passes):
        holding = {uid: held for uid, held in holding.items() if held[1] is None or held[1] > t}
        plan = schedule(waiting, nodes, [pod for pod, _ in holding.values()], t,
                        gpu_type_label=gpu_type_label, always_tolerated=always_tolerated, node_limits=node_limits)
        for admission in plan.admissions:
            job = waiting.get(admission.job_uid)
            waiting.update(job.uid, None)
            starts[job.uid] = t
            seconds = durations.get(job.uid, default_seconds)
            end = None if seconds is None else t + timedelta(seconds=seconds)
            holding[job.uid] = (TrainerPod(job.uid, admission.node, job.uid, True, job.namespace), end)
        later = [end for _, end in holding.values() if end is not None and end > t]
        if plan.next_wakeup is not None and plan.next_wakeup > t:
            later.append(plan.next_wakeup)
        if not waiting or not later:
            break
        t = min(later)
    return starts

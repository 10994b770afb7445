"""Pure analysis of the recorded pod and job history: admission latency, queue-order violations,
double-booked nodes, and a zero-latency list-scheduling reference for the makespan."""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise

from scale_watch import JobEvent, PodEvent

FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class JobInfo:
    """What the benchmark submitted: rank inputs and placement of one job."""

    uid: str
    namespace: str
    name: str
    priority: int
    order: int
    """Rank by (creationTimestamp, name), the operator's FIFO key within a namespace and priority."""
    gpu_type: str | None
    duration: float


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def admissions(pods: list[PodEvent]) -> list[PodEvent]:
    """The ADDED event of each trainer pod (one per admission), in revision order."""
    return sorted((e for e in pods if e.type == "ADDED"), key=lambda e: e.rv)


def admission_latencies(pods: list[PodEvent], released: dict[str, float]) -> tuple[list[float], list[float]]:
    """Per admission: seconds from its node becoming free to the trainer pod's ADDED event.

    A node becomes free when the watch shows its previous trainer pod finished (Succeeded/
    Failed) or gone; the first pod of each node counts from the node's release (`released`).
    Returns (latencies after a pod ended, latencies of the first pod per node).
    """
    steady, first = _timed_latencies(pods, released)
    return [latency for _, latency in steady], [latency for _, latency in first]


def latencies_after_first_pods(pods: list[PodEvent], released: dict[str, float]) -> list[float]:
    """The latencies after a pod ended whose node freed once every released node had its first pod.

    While the release's first pods are still being admitted, a node freed by a pod's end waits
    behind the nodes released before it: these latencies are the steady state's alone."""
    steady, first = _timed_latencies(pods, released)
    last_first = max((freed + latency for freed, latency in first), default=float("inf"))
    return [latency for freed, latency in steady if freed >= last_first]


def _timed_latencies(pods: list[PodEvent], released: dict[str, float]) -> tuple[list[tuple[float, float]], ...]:
    """`admission_latencies` as (when the node freed, latency) pairs."""
    released = dict(released)
    freed: dict[str, float] = {}
    holder: dict[str, str] = {}
    steady, first = [], []
    for event in sorted(pods, key=lambda e: e.rv):
        key = f"{event.namespace}/{event.name}"
        if event.type == "ADDED" and event.node:
            if event.node in freed:
                since = freed.pop(event.node)
                steady.append((since, event.t - since))
            elif event.node in released:
                since = released.pop(event.node)
                first.append((since, event.t - since))
            holder[event.node] = key
        elif (event.phase in FINISHED or event.type == "DELETED") and event.node and holder.get(event.node) == key:
            freed[event.node] = event.t
            holder.pop(event.node)
    return steady, first


def handoffs(pods: list[PodEvent], ended: dict[str, float], added: dict[str, float]) -> list[float]:
    """Per node, seconds from each pod's end (`ended`: when the kubelet ended it, before its
    status update) to the next pod's start (`added`: when the kubelet saw it): the whole chain
    the makespan pays for, measured, where `admission_latencies` counts from the watch."""
    by_node: dict[str, list[str]] = defaultdict(list)
    for event in admissions(pods):
        if event.node:
            by_node[event.node].append(f"{event.namespace}/{event.name}")
    return [added[b] - ended[a] for keys in by_node.values() for a, b in pairwise(keys)
            if a in ended and b in added]


def double_bookings(pods: list[PodEvent]) -> list[tuple[str, str, str]]:
    """(node, holder, newcomer) each time a trainer pod targets a node whose pod has not finished."""
    active: dict[str, set[str]] = defaultdict(set)
    found = []
    for event in sorted(pods, key=lambda e: e.rv):
        if not event.node:
            continue
        key = f"{event.namespace}/{event.name}"
        if event.type == "DELETED" or event.phase in FINISHED:
            active[event.node].discard(key)
        elif key not in active[event.node]:
            found.extend((event.node, other, key) for other in active[event.node])
            active[event.node].add(key)
    return found


def order_violations(pods: list[PodEvent], jobs: list[JobEvent], info: dict[str, JobInfo],
                     node_type: dict[str, str]) -> list[tuple[str, str, str]]:
    """Admissions that passed over a better-ranked waiting job fitting the same node.

    At each trainer pod creation (job A on node n, revision r), a violation is a job B that at r
    was Queued (its last event before r; not in backoff), fitted n (no GPU type or n's type),
    and ranked above A: higher priority, or equal priority in the same namespace and submitted
    earlier. Equal priorities across namespaces take turns by design (fair share) and are not
    compared. Returns (node, admitted job, passed-over job).
    """
    timeline = sorted([(e.rv, 0, e) for e in jobs] + [(e.rv, 1, e) for e in admissions(pods)],
                      key=lambda x: (x[0], x[1]))
    waiting: set[str] = set()
    by_priority: dict[tuple[str | None, int], int] = defaultdict(int)
    lanes: dict[tuple[str | None, str, int], list[tuple[int, str]]] = defaultdict(list)
    found = []
    for _, kind, event in timeline:
        if kind == 0:
            job = info.get(event.uid)
            if job is None:
                continue
            now_waiting = event.phase == "Queued" and not event.not_before and event.type != "DELETED"
            if now_waiting and job.uid not in waiting:
                waiting.add(job.uid)
                by_priority[job.gpu_type, job.priority] += 1
                heapq.heappush(lanes[job.gpu_type, job.namespace, job.priority], (job.order, job.uid))
            elif not now_waiting and job.uid in waiting:
                waiting.discard(job.uid)
                by_priority[job.gpu_type, job.priority] -= 1
            continue
        admitted = info.get(event.job_uid)
        if admitted is None or not event.node:
            continue
        for group in (None, node_type.get(event.node)):
            higher = [p for (g, p), n in by_priority.items() if g == group and n > 0 and p > admitted.priority]
            lane = lanes[group, admitted.namespace, admitted.priority]
            while lane and lane[0][1] not in waiting:
                heapq.heappop(lane)
            earlier = lane and lane[0][0] < admitted.order and lane[0][1] != admitted.uid
            if higher or earlier:
                other = f"priority {max(higher)}" if higher else info[lane[0][1]].name
                found.append((event.node, admitted.name, other))
                break
    return found


def list_schedule_makespan(jobs: list[JobInfo], node_type: dict[str, str], latency: float = 0.0) -> float:
    """Makespan of an operator that, `latency` seconds after a node frees (or is released at 0),
    starts the best-ranked job the node fits. `latency=0` is the zero-latency reference.

    Rank: priority, then submission order (the namespace turns do not change the total work).
    """
    ranked = sorted(jobs, key=lambda j: (-j.priority, j.order))
    queues: dict[str | None, list[tuple[int, int, JobInfo]]] = defaultdict(list)
    for rank, job in enumerate(ranked):
        queues[job.gpu_type].append((rank, job.order, job))
    for queue in queues.values():
        queue.reverse()  # pop() from the end takes the best rank
    free = [(0.0, node) for node in sorted(node_type)]
    heapq.heapify(free)
    end = 0.0
    while free:
        t, node = heapq.heappop(free)
        candidates = [q for q in (queues[None], queues[node_type[node]]) if q]
        if not candidates:
            continue
        queue = min(candidates, key=lambda q: q[-1][0])
        job = queue.pop()[2]
        finish = t + latency + job.duration
        end = max(end, finish)
        heapq.heappush(free, (finish, node))
    return end


def latency_within(jobs: list[JobInfo], node_type: dict[str, str], makespan: float) -> float:
    """The largest handoff latency (seconds, to 0.1 ms) at which `list_schedule_makespan` stays
    within `makespan`; 0.0 when even the zero-latency reference exceeds it.

    With a target makespan (say 1.05 x ideal) it is what the target asks of the whole chain from
    one pod's end to the next pod's start on its node (the end's status write, the watch, the
    pass, the claim, the pod create); with a measured makespan, the latency that explains it.
    """
    if list_schedule_makespan(jobs, node_type) > makespan:
        return 0.0
    low, high = 0.0, max(j.duration for j in jobs)
    while high - low > 1e-4:
        mid = (low + high) / 2
        low, high = (mid, high) if list_schedule_makespan(jobs, node_type, mid) <= makespan else (low, mid)
    return low

"""What the operator knows of the cluster: the jobs as their watch events left them (the job
handler keeps them; `startup_listing` says when a restarted operator has them all), kopf's
indexes of trainer pods and GPU nodes (filled from the watch streams before any handler runs),
read through views parsed once per resourceVersion, plus the change detection that decides
whether an event needs a scheduling pass. Why jobs are not a kopf index: see `handlers`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from .own_writes import OwnWrites
from .scheduling import GpuNode, TrainerPod, WaitingQueue
from .views import JOB_UID_LABEL, JobView, QueueEntry, pod_active, trainer_pod

VIEW_CACHE = 512
"""Parsed JobViews kept (most recently used), for the reconciles of jobs that are changing."""


def values(store: Any) -> list:
    """The values of one kopf index key (a kopf Store) or of a plain list."""
    return list(store) if store is not None else []


class JobIndex:
    """Jobs as the job watch showed them (job uid -> slim body), trainer pods and GPU nodes as
    kopf indexes them (job uid -> slim pods, node name -> GpuNode), with the bodies this process
    wrote that the watch has not shown yet (`OwnWrites`) laid over them."""

    def __init__(self, own_writes: OwnWrites, jobs: dict[str, Any] | None = None,
                 pods: Mapping[str, Any] | None = None, nodes: Mapping[str, Any] | None = None):
        self.own_writes = own_writes
        self.jobs: dict[str, Any] = jobs if jobs is not None else {}
        """uid -> the slim body of the job's latest watch event (a dict the job handler writes)."""
        self.pods: Mapping[str, Any] = pods if pods is not None else {}
        self._node_events = 0
        """Node events seen (`node_event`) and indexes bound (`nodes`): `gpu_nodes` walks the node
        index again only when this moved."""
        self._node_list: tuple[int, list[GpuNode]] = (-1, [])
        """(`_node_events` when it was listed, the GPU nodes then)."""
        self.nodes = nodes if nodes is not None else {}
        self._entries: dict[str, QueueEntry] = {}
        """uid -> scheduling view of the job's latest body (rebuilt when its resourceVersion moves)."""
        self._changed: set[str] = set()
        """Jobs whose entry changed since `waiting` last brought the queue up to date (added to on
        any thread, taken from on the pass's: set.add and set.pop are atomic)."""
        self._queue = WaitingQueue()
        self._active_pods: dict[tuple[str, str], str] = {}
        """(namespace, name) -> job uid of each trainer pod whose latest event showed it active (`pod_event`):
        a pass reads only their jobs' pods, not the ended pods jobs keep (spec.cleanPodPolicy None)."""
        self._pod_views: dict[int, tuple[Any, TrainerPod]] = {}
        """id(pod body) -> (the body, its TrainerPod): kopf replaces a pod's body on each event."""
        self._views: dict[str, JobView] = {}
        self._seen: dict[str, Any] = {}
        """uid -> the QueuedJob (or None) the last event showed: a change is what needs a pass."""
        self._nodes_seen: dict[str, Any] = {}

    @property
    def nodes(self) -> Mapping[str, Any]:
        """kopf's index of GPU nodes (node name -> GpuNodes); setting it lists it again at the next read."""
        return self._nodes

    @nodes.setter
    def nodes(self, nodes: Mapping[str, Any]) -> None:
        self._nodes = nodes
        self._node_events += 1

    def node_exists(self, name: str) -> bool:
        return name in self.nodes

    def saw_job(self, uid: str, body: Mapping[str, Any] | None) -> None:
        """The job's latest watch event: its slim body, or None when it was deleted."""
        if body is None:
            self.jobs.pop(uid, None)
        else:
            self.jobs[uid] = body

    def body(self, uid: str) -> Mapping[str, Any] | None:
        """The job's latest body: the watch's, or the one this process wrote that the watch has not shown yet."""
        return self.own_writes.latest(uid, self.jobs.get(uid))

    def job(self, uid: str) -> JobView | None:
        """The job's latest body as a JobView, parsed once per resourceVersion."""
        body = self.body(uid)
        if body is None:
            self._views.pop(uid, None)
            return None
        view = self._views.get(uid)
        if view is None or view.resource_version != body["metadata"].get("resourceVersion"):
            view = JobView.of(body)
            self._views.pop(uid, None)
            self._views[uid] = view
            if len(self._views) > VIEW_CACHE:
                self._views.pop(next(iter(self._views)), None)
        return view

    def entry(self, uid: str) -> QueueEntry | None:
        """The job's scheduling view, rebuilt only when its resourceVersion changed."""
        body = self.body(uid)
        if body is None:
            if self._entries.pop(uid, None) is not None:
                self._changed.add(uid)
            return None
        entry = self._entries.get(uid)
        if entry is None or entry.resource_version != body["metadata"].get("resourceVersion"):
            entry = self._entries[uid] = QueueEntry.of(body)
            self._changed.add(uid)
        return entry

    def job_event(self, uid: str) -> bool:
        """Records a job event; True when it could let a pass admit more (so a pass is due): a
        job that waits for a node is new or its scheduling view changed (placement, priority, backoff).

        Most job events do not: queuePosition, progress, conditions of running jobs. Nor does a
        job leaving the queue (admitted, suspended, deleted): no node frees, and the others'
        positions follow at the next pass.
        """
        entry = self.entry(uid)
        if entry is None:
            self._seen.pop(uid, None)
            return False
        before = self._seen.get(uid, ...)
        self._seen[uid] = entry.queued
        return entry.queued is not None and (before is ... or before != entry.queued)

    def node_event(self, name: str) -> bool:
        """Records a node event (kopf indexed it before the handler calls this); True when the node's
        scheduling view changed (not a heartbeat)."""
        self._node_events += 1
        now = values(self.nodes.get(name))
        changed = self._nodes_seen.get(name) != now
        self._nodes_seen[name] = now
        return changed

    def pods_of(self, uid: str) -> dict[str, Mapping[str, Any]]:
        return {p["metadata"]["name"]: p for p in values(self.pods.get(uid))}

    def all_jobs(self) -> Iterable[JobView]:
        for uid in list(self.jobs):
            view = self.job(uid)
            if view:
                yield view

    def all_entries(self) -> dict[str, QueueEntry]:
        """Every job's scheduling view.

        `job_event` keeps these views: it runs on every job event, after kopf indexed the body.
        Only the jobs with a write of this process ahead of the watch are read again here. A
        pass reads thousands: walking kopf's index (a Python mapping) took two thirds of a
        pass at 5000 jobs. `prune` drops the views of jobs the index no longer has.
        """
        entries = dict(self._entries)
        for uid in self.own_writes.uids():
            entry = self.entry(uid)
            if entry is None:
                entries.pop(uid, None)
            else:
                entries[uid] = entry
        return entries

    def phase_counts(self) -> Counter[str]:
        """Jobs by phase, for `lora_operator_jobs`; read at each scrape, from the metrics thread
        (a list of a dict's values is taken whole, so the event loop's writes cannot break it)."""
        return Counter(entry.phase or "Pending" for entry in list(self._entries.values()))

    def prune(self) -> None:
        """Forgets the scheduling views of jobs that left the index without a DELETED event
        reaching the handler: such a view would hold a place in the queue."""
        for uid in set(self._entries) - set(self.jobs):
            self._entries.pop(uid, None)
            self._seen.pop(uid, None)
            self._changed.add(uid)

    def waiting(self) -> WaitingQueue:
        """The waiting jobs (those of `all_entries` with a scheduling view), kept between passes
        and brought up to date here with the jobs whose entry changed since the last call: a pass
        over 10000 queued jobs neither copies nor sorts them. Call it from one thread (the
        pass's): it is the only one that changes the queue."""
        for uid in self.own_writes.uids():  # the overlay of `all_entries`
            self.entry(uid)
        while self._changed:
            try:
                uid = self._changed.pop()
            except KeyError:  # taken meanwhile
                break
            entry = self._entries.get(uid)
            self._queue.update(uid, entry.queued if entry is not None else None)
        return self._queue

    def pod_event(self, body: Mapping[str, Any], *, deleted: bool) -> bool:
        """Records a trainer pod's event (kopf indexed it before the handler calls this); True when the pod
        stopped being active with it: the first event that shows it ended, or its DELETED while active."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if not deleted and pod_active(body):
            self._active_pods[key] = (meta.get("labels") or {}).get(JOB_UID_LABEL, "")
            return False
        return self._active_pods.pop(key, None) is not None

    def trainer_pods(self) -> list[TrainerPod]:
        """The scheduling view of the pods of each job that has an active pod (`pod_event`), each made once
        per pod body. Call it from one thread (the pass's)."""
        seen, views, pods = self._pod_views, {}, []
        for uid in set(self._active_pods.values()):  # a copy, made under the GIL: the event loop adds meanwhile
            for body in values(self.pods.get(uid)):  # a copy: kopf changes the store on the event loop meanwhile
                key = id(body)
                known = seen.get(key)
                if known is None or known[0] is not body:
                    known = (body, trainer_pod(body))
                views[key] = known
                pods.append(known[1])
        self._pod_views = views
        return pods

    def gpu_nodes(self) -> list[GpuNode]:
        """Every GPU node's view (do not change the list). kopf's node index is walked again only
        after a node event: each pass read all 1000 of its stores, a sixth of a pass (issue 17). An
        event while it is walked lists it again at the next call (the count is read first)."""
        listed, nodes = self._node_list
        if listed != self._node_events:
            listed = self._node_events
            nodes = [n for store in list(self.nodes.values()) for n in values(store)]
            self._node_list = (listed, nodes)
        return nodes

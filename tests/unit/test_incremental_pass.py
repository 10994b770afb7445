"""The scheduling pass over a queue kept between passes (`WaitingQueue` given to `schedule`, the
controller's `JobIndex.waiting`) decides exactly what the straightforward pass decided: the
reference below is that pass (sort every waiting job into queue order, count every eligible
job's demand, walk the whole order, number every job left), run on the same snapshot, over
consecutive passes of random clusters (backoffs, namespace limits, node caches, node classes,
held pods, jobs arriving, changing, starting and ending).

Doubles, and why: the property is the pass's plan against the reference on one frozen snapshot, pass after
pass, over eight random worlds of twelve churns each. A live control plane moves on between the snapshot and the
pass (kwok starts pods, claims land), so the controller here reads a plain dict in place of kopf's pod index, fed
the pod events its handler would get (`JobIndex.pod_event`), and `LostClaims` in place of the API (every claim
loses, so the test starts the admitted jobs itself). The same pass against the real control plane is covered by
tests/cluster (test_operator.py, test_namespace_limits.py) and bench/operator_scale.py."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as hst

from lora_operator import controller as controller_module
from lora_operator.api import resolve_spec
from lora_operator.config import OperatorConfig
from lora_operator.controller import Controller
from lora_operator.metrics import OperatorMetrics
from lora_operator.own_writes import OwnWrites
from lora_operator.scheduling import (
    Admission,
    GpuNode,
    Plan,
    QueuedJob,
    RunningJob,
    Taint,
    Toleration,
    TrainerPod,
    WaitingQueue,
    estimated_starts,
    holding,
    node_limit,
    schedule,
)
from lora_operator.scheduling.fit import FreePool
from lora_operator.scheduling.order import fifo_key, turns_by_namespace

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LABEL = "gpu-type"
DEDICATED = Taint("dedicated", "ml", "NoSchedule")
TOLERATE = (Toleration(key="dedicated", operator="Exists"),)
NAMESPACES = ("a", "b", "c", "d")
SPEC = resolve_spec({"baseModel": {"family": "sd15", "uri": "s3://m/sd15"}, "dataset": {"uri": "s3://d/x/"},
                     "output": {"uri": "s3://o/"}}).to_resource()


def reference_order(jobs: list[QueuedJob], turns_taken: dict[str, int]) -> list[QueuedJob]:
    """Queue order by sorting every job on its key (-priority, turns + FIFO index, lane head, namespace)."""
    lanes: dict[tuple[int, str], list[QueuedJob]] = defaultdict(list)
    for job in jobs:
        lanes[job.priority, job.namespace].append(job)
    keyed = []
    for (priority, namespace), lane in lanes.items():
        lane.sort(key=fifo_key)
        for index, job in enumerate(lane):
            keyed.append(((-priority, turns_taken.get(namespace, 0) + index, fifo_key(lane[0]), namespace), job))
    keyed.sort(key=lambda pair: pair[0])
    return [job for _, job in keyed]


def reference_schedule(queued, nodes, pods, now, *, limits=None, caches=None) -> Plan:
    """The pass as it was: the whole queue ordered, demand counted job by job, every job numbered."""
    pods = [pod for pod in pods if pod.active]
    busy = {pod.node for pod in pods if pod.node is not None}
    running = {pod.job_uid for pod in pods}
    all_nodes = first_of(nodes, lambda n: n.name)
    usable = [n for n in all_nodes if n.ready and n.schedulable and n.gpus > 0]
    pool = FreePool.build((n for n in usable if n.name not in busy), gpu_type_label=LABEL)
    waiting = [job for job in first_of(queued, lambda j: j.uid) if job.uid not in running]
    ordered = reference_order(waiting, turns_by_namespace(pod.namespace for pod in pods))
    limits = limits or {}
    held = Counter(pod.namespace for pod in pods)

    def at_limit(namespace):
        limit = node_limit(limits, namespace)
        return limit is not None and held[namespace] >= limit

    def backoff(job):
        return job.not_before is not None and job.not_before > now

    if pool.remaining:
        pool.count_demand(job for job in ordered if not backoff(job) and not (limits and at_limit(job.namespace)))
    admissions, left, limited = [], [], set()
    for index, job in enumerate(ordered):
        if not pool.remaining:
            left.extend(ordered[index:])
            break
        if backoff(job):
            left.append(job)
        elif limits and at_limit(job.namespace):
            limited.add(job.uid)
            left.append(job)
        elif (taken := pool.take(job, holding(job.model, caches) if caches else frozenset())) is None:
            left.append(job)
        else:
            held[job.namespace] += 1
            admissions.append(Admission(job.uid, taken[0], taken[1], taken[2]))
    return Plan(admissions=admissions, positions={job.uid: i for i, job in enumerate(left, start=1)},
                free_nodes=pool.untaken(), busy_nodes=tuple(sorted(n.name for n in all_nodes if n.name in busy)),
                next_wakeup=min((job.not_before for job in left if backoff(job)), default=None),
                limited=frozenset(limited))


def first_of(items, key) -> list:
    """The first item of each key, in input order."""
    out: dict = {}
    for item in items:
        out.setdefault(key(item), item)
    return list(out.values())


def same(plan: Plan, reference: Plan) -> None:
    assert [(a.job_uid, a.node, a.gpus, dict(a.labels)) for a in plan.admissions] == \
        [(a.job_uid, a.node, a.gpus, dict(a.labels)) for a in reference.admissions]
    assert dict(plan.positions) == reference.positions
    assert list(plan.positions) == list(reference.positions)
    assert (plan.free_nodes, plan.busy_nodes, plan.next_wakeup, plan.limited) == \
        (reference.free_nodes, reference.busy_nodes, reference.next_wakeup, reference.limited)


class World:
    """A random cluster played pass after pass: the queue is kept and changed job by job."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        rng = self.rng
        self.nodes = []
        for i in range(rng.randint(3, 14)):
            gpu_type = rng.choice(["h100", "a100", "l40s"])
            labels = {LABEL: gpu_type, **({"pool": "x"} if rng.random() < 0.3 else {})}
            self.nodes.append(GpuNode(f"n{i:02d}", rng.random() > 0.1, rng.random() > 0.1,
                                      rng.choice([0, 1, 4, 8, 8]), labels,
                                      (DEDICATED,) if rng.random() < 0.2 else ()))
        self.limits = rng.choice([None, {"*": 2}, {"a": 1, "*": 3}, {"b": 0}])
        self.caches = rng.choice([None, {n.name: frozenset({rng.choice(["m1", "m2"])}) for n in self.nodes
                                         if rng.random() < 0.5}])
        self.jobs: dict[str, QueuedJob] = {}
        self.pods: dict[str, TrainerPod] = {}
        self.count = 0
        self.now = NOW

    def new_job(self) -> QueuedJob:
        rng = self.rng
        self.count += 1
        return QueuedJob(
            uid=f"u{self.count:04d}", namespace=rng.choice(NAMESPACES), name=f"job-{rng.randrange(50):02d}",
            priority=rng.choice([0, 0, 0, 1, 5]), created=NOW - timedelta(seconds=rng.randrange(20)),
            not_before=rng.choice([None] * 6 + [self.now + timedelta(seconds=rng.randint(-5, 5))]),
            node_selector=rng.choice([{}, {}, {"pool": "x"}]), tolerations=rng.choice([(), (), TOLERATE]),
            gpu_type=rng.choice([None, None, "h100", "a100", "l40s"]), model=rng.choice([None, "m1", "m2"]))

    def churn(self, queue: WaitingQueue | None) -> None:
        """Time passes; pods end; jobs arrive, change (backoff, priority) or leave."""
        rng = self.rng
        self.now += timedelta(seconds=rng.choice([0, 1, 3]))
        for uid in [u for u in self.pods if rng.random() < 0.3]:
            del self.pods[uid]
        for _ in range(rng.randint(0, 6)):
            job = self.new_job()
            self.jobs[job.uid] = job
            if queue is not None:
                queue.update(job.uid, job)
        for uid in [u for u in self.jobs if rng.random() < 0.1]:
            old = self.jobs[uid]
            if rng.random() < 0.3:
                del self.jobs[uid]
                changed = None
            else:
                changed = QueuedJob(old.uid, old.namespace, old.name, rng.choice([0, 1, 5]), old.created,
                                    self.now + timedelta(seconds=rng.randint(-3, 3)), old.node_selector,
                                    old.tolerations, old.gpu_type, old.model)
                self.jobs[uid] = changed
            if queue is not None:
                queue.update(uid, changed)

    def start(self, plan: Plan, queue: WaitingQueue | None) -> None:
        """Admitted jobs get pods; a few stay in the queue a while (claimed, the watch not caught up)."""
        for admission in plan.admissions:
            job = self.jobs[admission.job_uid]
            self.pods[job.uid] = TrainerPod(f"{job.uid}-pod", admission.node, job.uid, True, job.namespace)
            if self.rng.random() < 0.8:
                del self.jobs[job.uid]
                if queue is not None:
                    queue.update(job.uid, None)

    def pods_now(self) -> list[TrainerPod]:
        ended = [TrainerPod(f"old-{i}", self.rng.choice(self.nodes).name, f"gone-{i}", False, "a") for i in range(2)]
        return list(self.pods.values()) + ended


def test_a_kept_queue_plans_every_pass_as_the_whole_queue_sorted_each_time():
    for seed in range(40):
        world = World(seed)
        queue = WaitingQueue()
        for _ in range(25):
            world.churn(queue)
            pods = world.pods_now()
            plan = schedule(queue, world.nodes, pods, world.now, gpu_type_label=LABEL,
                            node_limits=world.limits, caches=world.caches)
            same(plan, reference_schedule(list(world.jobs.values()), world.nodes, pods, world.now,
                                          limits=world.limits, caches=world.caches))
            assert len(queue) == len(world.jobs)
            world.start(plan, queue)


job_st = hst.builds(
    QueuedJob,
    uid=hst.sampled_from([f"j{i}" for i in range(30)]),
    namespace=hst.sampled_from(NAMESPACES),
    name=hst.sampled_from(["x", "y"]),
    priority=hst.integers(0, 2),
    created=hst.integers(0, 5).map(lambda s: NOW - timedelta(seconds=s)),
    not_before=hst.none() | hst.integers(-3, 3).map(lambda s: NOW + timedelta(seconds=s)),
    node_selector=hst.sampled_from([{}, {"pool": "x"}]),
    tolerations=hst.sampled_from([(), TOLERATE]),
    gpu_type=hst.sampled_from([None, "h100", "a100"]),
)
node_st = hst.builds(
    GpuNode, name=hst.sampled_from([f"n{i}" for i in range(8)]), ready=hst.booleans(), schedulable=hst.booleans(),
    gpus=hst.integers(0, 8), labels=hst.fixed_dictionaries({LABEL: hst.sampled_from(["h100", "a100"])},
                                                           optional={"pool": hst.just("x")}),
    taints=hst.sampled_from([(), (DEDICATED,)]))
pod_st = hst.builds(TrainerPod, name=hst.just("p"), node=hst.none() | hst.sampled_from([f"n{i}" for i in range(8)]),
                    job_uid=hst.sampled_from([f"j{i}" for i in range(30)]), active=hst.booleans(),
                    namespace=hst.sampled_from(NAMESPACES))


@settings(max_examples=300, deadline=None)
@given(hst.lists(job_st, max_size=30), hst.lists(node_st, max_size=8), hst.lists(pod_st, max_size=8),
       hst.sampled_from([None, {"*": 1}, {"a": 0, "*": 2}]))
def test_schedule_of_a_snapshot_matches_the_reference_duplicates_and_all(jobs, nodes, pods, limits):
    same(schedule(jobs, nodes, pods, NOW, gpu_type_label=LABEL, node_limits=limits),
         reference_schedule(jobs, nodes, pods, NOW, limits=limits))


def test_estimates_over_a_kept_queue_match_passes_over_the_whole_queue():
    for seed in range(10):
        world = World(seed)
        for _ in range(3):
            world.churn(None)
        rng = random.Random(seed)
        running = [RunningJob(f"r{i}", rng.choice(NAMESPACES), node.name, rng.choice([None, 30.0, 90.0]))
                   for i, node in enumerate(world.nodes) if rng.random() < 0.7]
        durations = {uid: rng.choice([20.0, 60.0]) for uid in world.jobs if rng.random() < 0.5}
        got = estimated_starts(world.jobs.values(), world.nodes, running, NOW, gpu_type_label=LABEL,
                               durations=durations, default_seconds=45.0, node_limits=world.limits)
        assert got == reference_estimates(list(world.jobs.values()), world.nodes, running, durations, world.limits)


def reference_estimates(queued, nodes, running, durations, limits) -> dict[str, datetime]:
    """`estimated_starts` as it was: each simulated pass schedules the whole remaining queue."""
    waiting = {job.uid: job for job in queued}
    holding_: dict[str, tuple[TrainerPod, datetime | None]] = {
        r.uid: (TrainerPod(r.uid, r.node, r.uid, True, r.namespace),
                None if r.remaining_seconds is None else NOW + timedelta(seconds=r.remaining_seconds))
        for r in running}
    starts, t = {}, NOW
    for _ in range(10_000):
        holding_ = {uid: held for uid, held in holding_.items() if held[1] is None or held[1] > t}
        plan = reference_schedule(list(waiting.values()), nodes, [pod for pod, _ in holding_.values()], t,
                                  limits=limits)
        for admission in plan.admissions:
            job = waiting.pop(admission.job_uid)
            starts[job.uid] = t
            end = t + timedelta(seconds=durations.get(job.uid, 45.0))
            holding_[job.uid] = (TrainerPod(job.uid, admission.node, job.uid, True, job.namespace), end)
        later = [end for _, end in holding_.values() if end is not None and end > t]
        if plan.next_wakeup is not None and plan.next_wakeup > t:
            later.append(plan.next_wakeup)
        if not waiting or not later:
            break
        t = min(later)
    return starts


def body(job: QueuedJob, rv: int, phase: str = "Queued") -> dict:
    placement = {k: v for k, v in (("gpuType", job.gpu_type), ("nodeSelector", dict(job.node_selector) or None),
                                   ("tolerations", [{"key": "dedicated", "operator": "Exists"}]
                                    if job.tolerations else None)) if v}
    status = {"phase": phase, "resolvedSpec": {**SPEC, "placement": placement}}
    if job.not_before is not None:
        status["notBefore"] = job.not_before.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": {"uid": job.uid, "name": job.name, "namespace": job.namespace, "resourceVersion": str(rv),
                         "creationTimestamp": job.created.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "spec": {"priority": job.priority}, "status": status}


class LostClaims:
    """Every claim loses to a change of its job (so the test starts the admitted jobs itself)."""

    own_writes = OwnWrites()

    def patch_job_status(self, namespace, name, status, resource_version=None):
        from lora_operator.k8s import Conflict

        raise Conflict(name)

    def get_job(self, namespace, name):
        return None


def test_the_controllers_pass_over_its_kept_queue_matches_the_reference_on_its_snapshot(monkeypatch):
    for seed in range(8):
        world = World(seed)
        world.caches = None  # the controller's caches come from the jobs' reports: none here
        monkeypatch.setattr(controller_module, "utcnow", lambda world=world: world.now)
        controller = Controller(LostClaims(), OperatorConfig(gpu_type_label=LABEL,  # type: ignore[arg-type]
                                                             namespace_node_limits=world.limits or {}),
                                OperatorMetrics(), lambda *a: None)
        pods: dict[str, list[dict]] = {}
        controller.bind({}, pods, {n.name: [n] for n in world.nodes})
        rv = 0
        shown: dict[str, QueuedJob] = {}
        for _ in range(12):
            world.churn(None)
            for uid in sorted(set(shown) - set(world.jobs)):  # it no longer waits: started, deleted, or
                rv += 1                                       # gone from the index unseen (pruned)
                how = world.rng.choice(["started", "deleted", "pruned"])
                job = shown.pop(uid)
                if how == "started":
                    controller.job_event(uid, body(job, rv, phase="Running"))
                elif how == "deleted":
                    controller.index.saw_job(uid, None)
                    controller.job_event(uid)
                else:
                    controller.index.jobs.pop(uid)
                    controller.prune()
            for uid, job in world.jobs.items():
                if shown.get(uid) != job:
                    rv += 1
                    controller.job_event(uid, body(job, rv))
                    shown[uid] = job
            for gone in [b for store in pods.values() for b in store]:  # kopf indexes, then the handler runs
                controller.index.pod_event(gone, deleted=True)
            pods.clear()
            for pod in world.pods.values():
                pods[pod.job_uid] = [{"metadata": {"name": pod.name, "namespace": pod.namespace,
                                                   "labels": {"lora-operator.io/job-uid": pod.job_uid}},
                                      "spec": {"nodeName": pod.node}, "status": {"phase": "Running"}}]
                controller.index.pod_event(pods[pod.job_uid][0], deleted=False)
            snapshot = [e.queued for e in controller.all_entries().values() if e.queued is not None]
            plan = controller.run_pass()
            controller.admitter.claims._settled.wait(10)
            controller.admitter.reservations.recent.clear()  # the claims were lost: their nodes are free again
            reference = reference_schedule(snapshot, world.nodes, list(world.pods.values()), world.now,
                                           limits=world.limits)
            same(plan, reference)
            world.start(plan, None)



def test_whether_any_node_matches_a_waiting_job_is_checked_again_when_a_node_joins_or_changes():
    from lora_operator.admission import Admitter
    from lora_operator.claims import Claims
    from lora_operator.lifecycle import Lifecycle

    config, metrics = OperatorConfig(gpu_type_label=LABEL), OperatorMetrics()
    kube = LostClaims()
    lifecycle = Lifecycle(kube, config, metrics, lambda *a: None, node_exists=lambda name: True)  # type: ignore[arg-type]
    adm = Admitter(config, metrics, lambda *a: None, Claims(kube, config, metrics, lambda *a: None,  # type: ignore[arg-type]
                                                            lifecycle))
    queue = WaitingQueue([QueuedJob("u1", "a", "j", 0, NOW, gpu_type="h100")])
    a100, h100 = GpuNode("n1", True, True, 8, {LABEL: "a100"}), GpuNode("n2", True, True, 8, {LABEL: "h100"})
    busy = [TrainerPod("p", "n2", "other", True, "b")]  # n2 runs another job: nothing is admitted
    adm.run(queue, [a100], busy, NOW, lambda uid: None)
    assert adm.told_unmatched == {"u1"}
    adm.run(queue, [a100, h100], busy, NOW, lambda uid: None)
    assert adm.told_unmatched == frozenset()
    relabeled = GpuNode("n2", True, True, 8, {LABEL: "a100"})
    adm.run(queue, [a100, relabeled], busy, NOW, lambda uid: None)
    assert adm.told_unmatched == {"u1"}

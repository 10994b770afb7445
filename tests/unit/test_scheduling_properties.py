"""Invariants of the scheduling core over random snapshots (hypothesis)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from lora_operator.scheduling import (
    GpuNode,
    QueuedJob,
    Taint,
    Toleration,
    TrainerPod,
    fits,
    queue_order,
    schedule,
)
from lora_operator.scheduling.order import fifo_key

NOW = datetime(2025, 1, 1, tzinfo=UTC)
LABEL = "gpu-type"
DEDICATED = Taint("dedicated", "ml", "NoSchedule")

jobs_st = st.lists(
    st.builds(
        QueuedJob,
        uid=st.sampled_from([f"j{i}" for i in range(40)]),
        namespace=st.sampled_from(["a", "b", "c"]),
        name=st.just("job"),
        priority=st.integers(0, 2),
        created=st.integers(0, 30).map(lambda s: NOW - timedelta(seconds=s)),
        not_before=st.none() | st.integers(-10, 10).map(lambda s: NOW + timedelta(seconds=s)),
        node_selector=st.sampled_from([{}, {"pool": "x"}, {"pool": "y"}]),
        tolerations=st.sampled_from([(), (Toleration(key="dedicated", operator="Exists"),)]),
        gpu_type=st.sampled_from([None, "h100", "a100"]),
    ),
    max_size=30,
)
nodes_st = st.lists(
    st.builds(
        GpuNode,
        name=st.sampled_from([f"n{i}" for i in range(12)]),
        ready=st.booleans(),
        schedulable=st.booleans(),
        gpus=st.integers(0, 8),
        labels=st.fixed_dictionaries({LABEL: st.sampled_from(["h100", "a100"])}, optional={"pool": st.just("x")}),
        taints=st.sampled_from([(), (DEDICATED,)]),
    ),
    max_size=12,
)
pods_st = st.lists(
    st.builds(
        TrainerPod,
        name=st.just("pod"),
        node=st.none() | st.sampled_from([f"n{i}" for i in range(12)]),
        job_uid=st.sampled_from([f"j{i}" for i in range(40)]),
        active=st.booleans(),
        namespace=st.sampled_from(["", "a", "b"]),
    ),
    max_size=6,
)


def _first(items, key):
    seen = {}
    for item in items:
        seen.setdefault(key(item), item)
    return seen


def _context(jobs, nodes, pods):
    active = [p for p in pods if p.active]
    running = {p.job_uid for p in active}
    waiting = [j for j in _first(jobs, lambda j: j.uid).values() if j.uid not in running]
    turns = Counter(p.namespace for p in active if p.namespace)
    return _first(nodes, lambda n: n.name), {p.node for p in active}, running, queue_order(waiting, turns)


@settings(max_examples=300, deadline=None)
@given(jobs_st, nodes_st, pods_st)
def test_admissions_are_safe(jobs, nodes, pods):
    plan = schedule(jobs, nodes, pods, NOW, gpu_type_label=LABEL)
    by_name, busy, running, _ = _context(jobs, nodes, pods)
    by_uid = _first(jobs, lambda j: j.uid)
    assert len({a.node for a in plan.admissions}) == len(plan.admissions), "a node was double-booked"
    assert len({a.job_uid for a in plan.admissions}) == len(plan.admissions)
    for admission in plan.admissions:
        node, job = by_name[admission.node], by_uid[admission.job_uid]
        assert node.ready and node.schedulable and node.gpus > 0
        assert node.name not in busy
        assert admission.gpus == node.gpus
        assert job.uid not in running
        assert job.not_before is None or job.not_before <= NOW
        assert fits(job, node, gpu_type_label=LABEL)


@settings(max_examples=300, deadline=None)
@given(jobs_st, nodes_st, pods_st)
def test_positions_number_the_waiting_jobs_in_queue_order(jobs, nodes, pods):
    plan = schedule(jobs, nodes, pods, NOW, gpu_type_label=LABEL)
    _, _, _, order = _context(jobs, nodes, pods)
    admitted = {a.job_uid for a in plan.admissions}
    left = [j.uid for j in order if j.uid not in admitted]
    assert plan.positions == {uid: i for i, uid in enumerate(left, start=1)}
    assert [a.job_uid for a in plan.admissions] == [j.uid for j in order if j.uid in admitted]


@settings(max_examples=300, deadline=None)
@given(jobs_st, nodes_st, pods_st)
def test_no_earlier_job_could_have_used_a_later_jobs_node_and_no_fit_is_left_idle(jobs, nodes, pods):
    plan = schedule(jobs, nodes, pods, NOW, gpu_type_label=LABEL)
    by_name, _, _, order = _context(jobs, nodes, pods)
    node_of = {a.job_uid: by_name[a.node] for a in plan.admissions}
    passed_over = []
    for job in order:
        eligible = job.not_before is None or job.not_before <= NOW
        if job.uid in node_of:
            assert not any(fits(earlier, node_of[job.uid], gpu_type_label=LABEL) for earlier in passed_over)
        elif eligible:
            passed_over.append(job)
    for name in plan.free_nodes:
        assert not any(fits(job, by_name[name], gpu_type_label=LABEL) for job in passed_over)


@settings(max_examples=300, deadline=None)
@given(jobs_st, st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 5)))
def test_queue_order_is_the_sort_on_priority_turn_lane_head_and_namespace(jobs, turns):
    jobs = list(_first(jobs, lambda j: j.uid).values())
    lanes: dict = {}
    for job in sorted(jobs, key=fifo_key):
        lanes.setdefault((job.priority, job.namespace), []).append(job)
    keys = {job.uid: (-job.priority, turns.get(job.namespace, 0) + rank, fifo_key(lane[0]), job.namespace)
            for lane in lanes.values() for rank, job in enumerate(lane)}
    assert [j.uid for j in queue_order(jobs, turns)] == [j.uid for j in sorted(jobs, key=lambda j: keys[j.uid])]


@settings(max_examples=200, deadline=None)
@given(jobs_st)
def test_queue_order_is_priority_then_fifo_within_a_namespace(jobs):
    order = queue_order(_first(jobs, lambda j: j.uid).values())
    priorities = [j.priority for j in order]
    assert priorities == sorted(priorities, reverse=True)
    for namespace in "abc":
        for priority in range(3):
            lane = [(j.created, j.name, j.uid) for j in order if j.namespace == namespace and j.priority == priority]
            assert lane == sorted(lane)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.integers(0, 10))
def test_equal_priority_namespaces_alternate(a_jobs, b_jobs, free):
    jobs = [QueuedJob(f"a{i}", "a", "x", 0, NOW + timedelta(seconds=i)) for i in range(a_jobs)]
    jobs += [QueuedJob(f"b{i}", "b", "x", 0, NOW + timedelta(seconds=100 + i)) for i in range(b_jobs)]
    nodes = [GpuNode(f"n{i}", True, True, 8) for i in range(free)]
    plan = schedule(jobs, nodes, [], NOW, gpu_type_label=LABEL)
    per_namespace = Counter(a.job_uid[0] for a in plan.admissions)
    share = len(plan.admissions) // 2
    assert min(per_namespace["a"], a_jobs) >= min(share, a_jobs)
    assert min(per_namespace["b"], b_jobs) >= min(share, b_jobs)
    order = [j.uid[0] for j in queue_order(jobs)]
    both = 2 * min(a_jobs, b_jobs)
    assert order[:both] == ["a", "b"] * min(a_jobs, b_jobs)


limits_st = st.dictionaries(st.sampled_from(["a", "b", "c", "*"]), st.integers(0, 3), max_size=3)


@settings(max_examples=300, deadline=None)
@given(jobs_st, nodes_st, pods_st, limits_st)
def test_namespace_node_limits_hold_and_only_limited_jobs_are_passed_over_for_them(jobs, nodes, pods, limits):
    plan = schedule(jobs, nodes, pods, NOW, gpu_type_label=LABEL, node_limits=limits)
    by_name, _, _, order = _context(jobs, nodes, pods)
    held = Counter(p.namespace for p in pods if p.active)
    node_of = {a.job_uid: by_name[a.node] for a in plan.admissions}
    passed_over = []
    for job in order:  # replay the pass: a namespace's count grows with each of its admissions
        limit = limits.get(job.namespace, limits.get("*"))
        limited = limit is not None and held[job.namespace] >= limit
        eligible = (job.not_before is None or job.not_before <= NOW) and not limited
        if job.uid in node_of:
            assert not limited, f"{job.namespace} was at its limit {limit}"
            held[job.namespace] += 1
            assert not any(fits(earlier, node_of[job.uid], gpu_type_label=LABEL) for earlier in passed_over)
        elif eligible:
            passed_over.append(job)
    for name in plan.free_nodes:
        assert not any(fits(job, by_name[name], gpu_type_label=LABEL) for job in passed_over)
    admitted = {a.job_uid for a in plan.admissions}
    assert plan.positions == {uid: i for i, uid in enumerate((j.uid for j in order if j.uid not in admitted), 1)}

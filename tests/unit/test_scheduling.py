"""The scheduling core: examples of each rule (properties are in test_scheduling_properties.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from lora_operator.scheduling import (
    GpuNode,
    QueuedJob,
    Taint,
    Toleration,
    TrainerPod,
    fits,
    queue_order,
    resource_toleration,
    schedule,
)

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
LABEL = "lora-operator.io/gpu-type"


def job(uid, *, ns="a", prio=0, age=0, **kw) -> QueuedJob:
    return QueuedJob(uid=uid, namespace=ns, name=uid, priority=prio, created=NOW - timedelta(seconds=1000 - age), **kw)


def node(name, *, gpus=8, ready=True, schedulable=True, gpu_type="h100", labels=None, taints=()) -> GpuNode:
    all_labels = {LABEL: gpu_type, **(labels or {})}
    return GpuNode(name, ready, schedulable, gpus, all_labels, tuple(taints))


def plan(jobs, nodes, pods=(), now=NOW, **kw):
    return schedule(jobs, nodes, pods, now, gpu_type_label=LABEL, **kw)


def admitted(p) -> dict[str, str]:
    return {a.job_uid: a.node for a in p.admissions}


def test_free_node_goes_to_the_oldest_job_with_all_its_gpus():
    p = plan([job("new", age=5), job("old", age=1)], [node("n1", gpus=4)])
    assert [(a.job_uid, a.node, a.gpus) for a in p.admissions] == [("old", "n1", 4)]
    assert p.positions == {"new": 1}


def test_an_admission_carries_the_labels_of_its_node():
    """The pod renderer reads the node's GPU memory label from them (render.node_gpu_memory)."""
    nodes = [node("small", labels={"nvidia.com/gpu.memory": "24576"}),
             node("big", labels={"nvidia.com/gpu.memory": "81559"})]
    p = plan([job("a"), job("b", age=1)], nodes)
    assert {a.node: a.labels["nvidia.com/gpu.memory"] for a in p.admissions} == {"small": "24576", "big": "81559"}
    assert all(a.labels == next(n.labels for n in nodes if n.name == a.node) for a in p.admissions)


def test_higher_priority_goes_first():
    p = plan([job("old"), job("urgent", prio=10, age=9)], [node("n1")])
    assert admitted(p) == {"urgent": "n1"}


def test_not_ready_cordoned_gpuless_and_busy_nodes_are_not_used():
    nodes = [
        node("down", ready=False),
        node("cordoned", schedulable=False),
        node("cpu", gpus=0),
        node("busy"),
    ]
    pods = [TrainerPod("p", "busy", "other", active=True)]
    p = plan([job("j")], nodes, pods)
    assert p.admissions == []
    assert p.positions == {"j": 1}
    assert p.busy_nodes == ("busy",)


def test_a_pending_pod_holds_its_target_node_but_a_finished_one_does_not():
    pods = [TrainerPod("p1", "n1", "x", active=True), TrainerPod("p2", "n2", "y", active=False)]
    p = plan([job("j")], [node("n1"), node("n2")], pods)
    assert admitted(p) == {"j": "n2"}


def test_a_job_with_an_active_pod_is_never_admitted_again():
    pods = [TrainerPod("p", None, "j", active=True)]
    p = plan([job("j"), job("k", age=1)], [node("n1"), node("n2")], pods)
    assert admitted(p) == {"k": "n1"}
    assert "j" not in p.positions


def test_two_jobs_never_share_a_node():
    p = plan([job("j1"), job("j2", age=1)], [node("n1")])
    assert admitted(p) == {"j1": "n1"}
    assert p.positions == {"j2": 1}


def test_backoff_job_is_skipped_but_keeps_its_place():
    later = NOW + timedelta(seconds=30)
    jobs = [job("backoff", not_before=later), job("j2", age=1), job("j3", age=2)]
    p = plan(jobs, [node("n1")])
    assert admitted(p) == {"j2": "n1"}
    assert p.positions == {"backoff": 1, "j3": 2}
    assert p.next_wakeup == later
    assert admitted(plan(jobs, [node("n1")], now=later)) == {"backoff": "n1"}


def test_head_that_fits_nothing_does_not_block_jobs_behind_it():
    jobs = [job("wants-a100", prio=5, gpu_type="a100"), job("any", age=1)]
    p = plan(jobs, [node("n1", gpu_type="h100")])
    assert admitted(p) == {"any": "n1"}
    assert p.positions == {"wants-a100": 1}


def test_blocked_head_gets_the_first_node_it_fits_before_jobs_behind_it():
    jobs = [job("wants-a100", prio=5, gpu_type="a100"), job("any", age=1)]
    p = plan(jobs, [node("n1", gpu_type="a100")])
    assert admitted(p) == {"wants-a100": "n1"}


def test_flexible_job_leaves_the_scarce_node_to_the_job_that_needs_it():
    jobs = [job("flexible"), job("needs-h100", age=1, gpu_type="h100")]
    p = plan(jobs, [node("h", gpu_type="h100"), node("a", gpu_type="a100")])
    assert admitted(p) == {"flexible": "a", "needs-h100": "h"}


def test_node_selector_must_match_labels():
    jobs = [job("j", node_selector={"pool": "train"})]
    assert plan(jobs, [node("n1", labels={"pool": "infer"})]).admissions == []
    assert admitted(plan(jobs, [node("n2", labels={"pool": "train"})])) == {"j": "n2"}


def test_taints_need_tolerations():
    tainted = node("t", taints=[Taint("dedicated", "ml", "NoSchedule")])
    assert plan([job("j")], [tainted]).admissions == []
    tol = (Toleration(key="dedicated", operator="Equal", value="ml", effect="NoSchedule"),)
    assert admitted(plan([job("j", tolerations=tol)], [tainted])) == {"j": "t"}


def test_prefer_no_schedule_taint_does_not_block():
    assert admitted(plan([job("j")], [node("t", taints=[Taint("x", "y", "PreferNoSchedule")])])) == {"j": "t"}


def test_gpu_resource_taint_is_tolerated_when_passed_as_always_tolerated():
    gpu_node = node("g", taints=[Taint("nvidia.com/gpu", None, "NoSchedule")])
    assert plan([job("j")], [gpu_node]).admissions == []
    p = plan([job("j")], [gpu_node], always_tolerated=[resource_toleration("nvidia.com/gpu")])
    assert admitted(p) == {"j": "g"}


def test_toleration_semantics():
    taint = Taint("k", "v", "NoExecute")
    assert Toleration(operator="Exists").tolerates(taint)
    assert Toleration(key="k", operator="Exists").tolerates(taint)
    assert Toleration(key="k", operator="Equal", value="v").tolerates(taint)
    assert not Toleration(key="k", operator="Equal", value="w").tolerates(taint)
    assert not Toleration(key="k", operator="Exists", effect="NoSchedule").tolerates(taint)
    assert not Toleration(key="other", operator="Exists").tolerates(taint)
    assert Toleration(key="k", operator="Equal").tolerates(Taint("k", None, "NoSchedule"))
    assert Toleration.from_mapping({"key": "k", "operator": "Exists"}).tolerates(taint)
    assert Taint.from_mapping({"key": "k", "value": "v", "effect": "NoExecute"}) == taint


def test_fits_checks_gpu_type_label():
    assert fits(job("j", gpu_type="h100"), node("n"), gpu_type_label=LABEL)
    assert not fits(job("j", gpu_type="a100"), node("n"), gpu_type_label=LABEL)
    assert not fits(job("j", gpu_type="h100"), GpuNode("bare", True, True, 8), gpu_type_label=LABEL)


def test_namespaces_take_turns_at_equal_priority_in_one_pass():
    jobs = [job(f"a{i}", ns="a", age=i) for i in range(3)] + [job(f"b{i}", ns="b", age=10 + i) for i in range(3)]
    order = [j.uid for j in queue_order(jobs)]
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]
    p = plan(jobs, [node("n1"), node("n2")])
    assert set(admitted(p)) == {"a0", "b0"}
    assert p.positions == {"a1": 1, "b1": 2, "a2": 3, "b2": 4}


def test_namespaces_take_turns_across_passes():
    # Namespace a queued everything first; one node frees up per pass.
    jobs = [job(f"a{i}", ns="a", age=i) for i in range(4)] + [job("b0", ns="b", age=50)]
    p1 = plan(jobs, [node("n1")])
    assert admitted(p1) == {"a0": "n1"}
    pods = [TrainerPod("a0-a1", "n1", "a0", active=True, namespace="a")]
    p2 = plan([j for j in jobs if j.uid != "a0"], [node("n1"), node("n2")], pods)
    assert admitted(p2) == {"b0": "n2"}


def test_priority_beats_fairness():
    jobs = [job("a0", ns="a", prio=1), job("a1", ns="a", prio=1, age=1), job("b0", ns="b")]
    assert [j.uid for j in queue_order(jobs)] == ["a0", "a1", "b0"]


def test_fifo_ties_break_by_name_then_uid():
    jobs = [job("z"), job("m"), job("b")]
    assert [j.uid for j in queue_order(jobs)] == ["b", "m", "z"]


def test_duplicate_snapshot_entries_are_counted_once():
    p = plan([job("j"), job("j")], [node("n1"), node("n1")])
    assert [a.node for a in p.admissions] == ["n1"]


def test_free_nodes_lists_the_nodes_left_untaken():
    p = plan([job("j")], [node("n2"), node("n1"), node("n3")])
    assert admitted(p) == {"j": "n1"}
    assert p.free_nodes == ("n2", "n3")


def test_five_thousand_jobs_on_a_hundred_nodes_in_well_under_a_second():
    jobs = [
        job(f"j{i:05d}", ns=f"ns{i % 13}", prio=i % 3, age=i % 500, gpu_type=(None, "h100", "a100")[i % 3])
        for i in range(5000)
    ]
    nodes = [node(f"n{i:03d}", gpu_type=("h100", "a100")[i % 2], labels={"host": f"n{i}"}) for i in range(100)]
    pods = [TrainerPod(f"p{i}", f"n{i:03d}", f"x{i}", active=True, namespace="ns1") for i in range(0, 100, 3)]
    started = time.perf_counter()
    p = plan(jobs, nodes, pods)
    elapsed = time.perf_counter() - started
    assert len(p.admissions) == 100 - len(pods)
    assert sorted(p.positions.values()) == list(range(1, 5000 - len(p.admissions) + 1))
    assert elapsed < 1.0


def test_a_namespace_at_its_node_limit_waits_and_others_take_the_nodes():
    jobs = [job("a1", age=1), job("a2", age=2), job("a3", age=3), job("b1", ns="b", age=4)]
    nodes = [node("n1"), node("n2"), node("n3"), node("n4")]
    p = plan(jobs, nodes, node_limits={"a": 2})  # the limit counts this pass's own admissions
    assert sorted(admitted(p)) == ["a1", "a2", "b1"] and p.positions == {"a3": 1}
    assert p.limited == {"a3"}
    running = [TrainerPod("p", "n1", "a0", active=True, namespace="a")]
    p = plan(jobs, nodes, running, node_limits={"a": 2})  # ... and the namespace's running pods
    assert sorted(admitted(p)) == ["a1", "b1"] and p.positions == {"a2": 1, "a3": 2}
    p = plan(jobs, nodes, node_limits={"*": 1, "b": 0})  # "*": every namespace not listed
    assert sorted(admitted(p)) == ["a1"] and p.positions == {"b1": 1, "a2": 2, "a3": 3}  # namespaces take turns
    assert admitted(plan(jobs, nodes, node_limits={})) == admitted(plan(jobs, nodes))  # no limit
    assert p.limited == {"a2", "a3", "b1"} and plan(jobs, nodes).limited == frozenset()

"""Cache-aware placement: a job takes a free node whose cache holds its base model when one is alike
to the usual choice; the queue order and the set of admitted jobs never change for it."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from test_scheduling_properties import LABEL, NOW, jobs_st, nodes_st, pods_st

from lora_operator.scheduling import GpuNode, QueuedJob, fits, holding, model_key, node_caches, schedule
from lora_operator.views import QueueEntry

MODELS = ["s3://models/sdxl/", "s3://models/flux/", "s3://models/sd15/"]


def node(name: str, gpus: int = 8, gpu_type: str = "h100") -> GpuNode:
    return GpuNode(name=name, ready=True, schedulable=True, gpus=gpus,
                   labels={LABEL: gpu_type, "kubernetes.io/hostname": name})


def job(uid: str, model: str | None, age: int = 0, gpu_type: str | None = None) -> QueuedJob:
    return QueuedJob(uid=uid, namespace="a", name=uid, priority=0, created=NOW - timedelta(seconds=age),
                     gpu_type=gpu_type, model=model)


def plan(jobs, nodes, caches=None):
    return schedule(jobs, nodes, [], NOW, gpu_type_label=LABEL, caches=caches)


def placed(p) -> dict[str, str]:
    return {a.job_uid: a.node for a in p.admissions}


def test_the_job_takes_the_node_that_holds_its_model():
    nodes = [node("gpu-a"), node("gpu-b")]
    assert placed(plan([job("j", MODELS[0])], nodes)) == {"j": "gpu-a"}  # usual: by name
    assert placed(plan([job("j", MODELS[0])], nodes, {"gpu-b": frozenset({MODELS[0]})})) == {"j": "gpu-b"}
    # another model cached there changes nothing
    assert placed(plan([job("j", MODELS[0])], nodes, {"gpu-b": frozenset({MODELS[1]})})) == {"j": "gpu-a"}


def test_the_queue_head_keeps_its_turn_and_the_next_job_gets_the_rest():
    nodes = [node("gpu-a"), node("gpu-b")]
    caches = {"gpu-a": frozenset({MODELS[1]}), "gpu-b": frozenset({MODELS[0]})}
    jobs = [job("head", MODELS[0], age=10), job("next", MODELS[0], age=5)]
    assert placed(plan(jobs, nodes, caches)) == {"head": "gpu-b", "next": "gpu-a"}


def test_a_cached_node_another_job_needs_is_not_taken():
    # "any" runs anywhere; "h100-only" needs the one h100 node. The h100 node holds any's model, but
    # is not alike to the a100 node for every job: taking it would leave h100-only without a node.
    nodes = [node("a100-1", gpu_type="a100"), node("h100-1", gpu_type="h100")]
    jobs = [job("any", MODELS[0], age=10), job("h100-only", MODELS[1], age=5, gpu_type="h100")]
    p = plan(jobs, nodes, {"h100-1": frozenset({MODELS[0]})})
    assert placed(p) == {"any": "a100-1", "h100-only": "h100-1"}


def test_the_operator_learns_the_caches_from_the_jobs_statuses():
    status = {"cachedOn": "gpu-b", "models": [{"uri": MODELS[0], "key": "k", "hit": False, "bytes": 9}]}
    body = {"metadata": {"uid": "u1", "resourceVersion": "1"}, "status": status}
    entries = [QueueEntry.of(body), QueueEntry.of({"metadata": {"uid": "u2"}, "status": {}})]
    caches = node_caches(e.cached for e in entries)
    assert caches == {"gpu-b": frozenset({MODELS[0]})}
    assert holding(model_key(MODELS[0]), caches) == {"gpu-b"}
    assert holding(model_key("hf://org/m", "v2"), {"n": frozenset({"hf://org/m@v1"})}) == frozenset()


caches_st = st.dictionaries(st.sampled_from([f"n{i}" for i in range(12)]),
                            st.frozensets(st.sampled_from(MODELS), max_size=2), max_size=12)


@settings(max_examples=300, deadline=None)
@given(jobs_st, nodes_st, pods_st, caches_st, st.lists(st.sampled_from([None, *MODELS]), min_size=30, max_size=30))
def test_caches_change_only_which_alike_node_a_job_takes(jobs, nodes, pods, caches, models):
    jobs = [replace(j, model=models[i]) for i, j in enumerate(jobs)]
    without = schedule(jobs, nodes, pods, NOW, gpu_type_label=LABEL)
    with_caches = schedule(jobs, nodes, pods, NOW, gpu_type_label=LABEL, caches=caches)
    # the same jobs, in the same order, start; the same jobs wait in the same positions
    assert [a.job_uid for a in with_caches.admissions] == [a.job_uid for a in without.admissions]
    assert with_caches.positions == without.positions
    by_name = {n.name: n for n in reversed(nodes)}
    by_uid = {j.uid: j for j in reversed(jobs)}
    taken = [a.node for a in with_caches.admissions]
    assert len(taken) == len(set(taken))
    for admission in with_caches.admissions:
        chosen, queued = by_name[admission.node], by_uid[admission.job_uid]
        assert fits(queued, chosen, gpu_type_label=LABEL)
        assert admission.gpus == chosen.gpus
    # a job that took a node without its model left no alike free node with it: the one it took
    # and every untaken holder it fits differ in GPUs or labels (are not alike)
    for admission in with_caches.admissions:
        queued = by_uid[admission.job_uid]
        holders = holding(queued.model, caches)
        if admission.node in holders:
            continue
        chosen = by_name[admission.node]
        for name in set(with_caches.free_nodes) & holders:
            other = by_name[name]
            if fits(queued, other, gpu_type_label=LABEL):
                assert (other.gpus, dict(other.labels), other.taints) != (chosen.gpus, dict(chosen.labels),
                                                                          chosen.taints)


def test_no_caches_is_the_usual_plan():
    nodes = [node(f"gpu-{i}") for i in range(3)]
    jobs = [job(f"j{i}", MODELS[i % 3], age=10 - i) for i in range(4)]
    assert plan(jobs, nodes) == plan(jobs, nodes, {}) == plan(jobs, nodes, {"gone": frozenset(MODELS)})


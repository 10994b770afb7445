"""bench/scale_analysis.py: the checks the scale benchmark's "must be 0" figures rest on, and its
latency-aware list-scheduling reference, on small hand-made histories."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def analysis(monkeypatch):
    """bench/scale_analysis.py as a module (it imports its sibling scale_watch as a top-level module)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import scale_analysis

    return scale_analysis


def pod(analysis, t, rv, type_, name, node, phase="Pending", job=""):
    return analysis.PodEvent(t=t, rv=rv, type=type_, name=name, namespace="ns", job_uid=job or name,
                             node=node, phase=phase, deleting=False)


def job(analysis, uid, priority=0, order=0, gpu_type=None, duration=1.0, namespace="ns"):
    return analysis.JobInfo(uid, namespace, uid, priority, order, gpu_type, duration)


def test_a_pod_on_a_node_whose_pod_has_not_finished_is_a_double_booking(analysis):
    history = [pod(analysis, 0, 1, "ADDED", "a", "n1"), pod(analysis, 1, 2, "MODIFIED", "a", "n1", "Running"),
               pod(analysis, 2, 3, "ADDED", "b", "n1")]
    assert analysis.double_bookings(history) == [("n1", "ns/a", "ns/b")]
    ended = history[:2] + [pod(analysis, 2, 3, "MODIFIED", "a", "n1", "Succeeded"),
                           pod(analysis, 3, 4, "ADDED", "b", "n1")]
    assert analysis.double_bookings(ended) == []


def test_admission_latency_counts_from_the_node_freeing_and_the_first_pod_from_its_release(analysis):
    history = [pod(analysis, 1.5, 1, "ADDED", "a", "n1"), pod(analysis, 5.0, 2, "MODIFIED", "a", "n1", "Succeeded"),
               pod(analysis, 5.25, 3, "ADDED", "b", "n1")]
    steady, first = analysis.admission_latencies(history, {"n1": 1.0})
    assert steady == [0.25]
    assert first == [0.5]


def test_admitting_past_a_waiting_better_ranked_job_that_fits_is_an_order_violation(analysis):
    info = {"hi": job(analysis, "hi", priority=5, order=1), "lo": job(analysis, "lo", order=0)}
    queued = [analysis.JobEvent(t=0, rv=rv, type="ADDED", uid=uid, namespace="ns", name=uid, phase="Queued",
                                not_before=None) for rv, uid in ((1, "lo"), (2, "hi"))]
    admitted_lo = [pod(analysis, 1, 3, "ADDED", "lo-pod", "n1", job="lo")]
    assert analysis.order_violations(admitted_lo, queued, info, {"n1": "h100"}) == [("n1", "lo", "priority 5")]
    admitted_hi = [pod(analysis, 1, 3, "ADDED", "hi-pod", "n1", job="hi")]
    assert analysis.order_violations(admitted_hi, queued, info, {"n1": "h100"}) == []
    # a better-ranked job that does not fit the node (another GPU type) is no violation
    info["hi"] = job(analysis, "hi", priority=5, order=1, gpu_type="a10")
    assert analysis.order_violations(admitted_lo, queued, info, {"n1": "h100"}) == []


def test_the_reference_adds_the_handoff_latency_to_every_start_and_takes_jobs_by_rank(analysis):
    jobs = [job(analysis, "a", order=0, duration=4.0), job(analysis, "b", order=1, duration=1.0),
            job(analysis, "c", order=2, duration=1.0), job(analysis, "d", priority=1, order=3, duration=2.0)]
    nodes = {"n1": "h100", "n2": "h100"}
    # d (priority 1) and a start at 0; n1's d ends at 2, takes b (ends 3), then c (ends 4)
    assert analysis.list_schedule_makespan(jobs, nodes) == pytest.approx(4.0)
    # 0.5 s before each start: d 0.5-2.5, b 3-4, c 4.5-5.5 on one node; a 0.5-4.5 on the other
    assert analysis.list_schedule_makespan(jobs, nodes, latency=0.5) == pytest.approx(5.5)


def test_latency_within_inverts_the_reference(analysis):
    jobs = [job(analysis, str(i), order=i, duration=1.0 + (i % 3)) for i in range(30)]
    nodes = {f"n{i}": "h100" for i in range(4)}
    reference = analysis.list_schedule_makespan(jobs, nodes)
    assert analysis.latency_within(jobs, nodes, reference - 0.01) == 0.0
    budget = analysis.latency_within(jobs, nodes, reference + 1.0)
    assert budget > 0
    assert analysis.list_schedule_makespan(jobs, nodes, budget) <= reference + 1.0
    assert analysis.list_schedule_makespan(jobs, nodes, budget + 0.001) > reference + 1.0


def test_a_handoff_runs_from_the_kubelets_end_of_a_pod_to_its_start_of_the_next_on_the_same_node(analysis):
    history = [pod(analysis, 0, 1, "ADDED", "a", "n1"), pod(analysis, 0, 2, "ADDED", "x", "n2"),
               pod(analysis, 5, 3, "ADDED", "b", "n1"), pod(analysis, 9, 4, "ADDED", "c", "n1")]
    ended = {"ns/a": 4.9, "ns/b": 8.8, "ns/x": 3.0}
    added = {"ns/a": 0.1, "ns/b": 5.0, "ns/c": 9.0, "ns/x": 0.1}
    assert analysis.handoffs(history, ended, added) == pytest.approx([0.1, 0.2])


def test_latencies_after_first_pods_leave_out_the_nodes_freed_while_the_release_was_admitted(analysis):
    history = [pod(analysis, 1.5, 1, "ADDED", "a", "n1"), pod(analysis, 2.0, 2, "MODIFIED", "a", "n1", "Succeeded"),
               pod(analysis, 4.0, 3, "ADDED", "c", "n2"),  # n2's first pod: the release is admitted at 4.0
               pod(analysis, 6.0, 4, "ADDED", "b", "n1"), pod(analysis, 7.0, 5, "MODIFIED", "c", "n2", "Succeeded"),
               pod(analysis, 7.5, 6, "ADDED", "d", "n2")]
    steady, _ = analysis.admission_latencies(history, {"n1": 1.0, "n2": 1.0})
    assert steady == [4.0, 0.5]
    assert analysis.latencies_after_first_pods(history, {"n1": 1.0, "n2": 1.0}) == [0.5]

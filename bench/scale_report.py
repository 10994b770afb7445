"""The scale benchmark's report (`operator_scale.report`): what the recorded pod and job history, the
operator's metrics, the API server's request counts and the processes' CPU say about one run."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from scale_analysis import (
    admission_latencies,
    double_bookings,
    handoffs,
    latencies_after_first_pods,
    latency_within,
    list_schedule_makespan,
    order_violations,
    percentile,
)

TARGET_OVER_IDEAL = 1.05
"""The issue's makespan target, as a multiple of the ideal (total work / nodes)."""


def report(args, pool_sizes, jobs, info, node_type, recorder, kubelet, released, before, mid, after, times,
           usage_queued, usage, operator, rss, cpu, summaries, lag, by_client=None) -> dict:
    t0 = times["t0"]
    last_end = max(kubelet.ended.values())
    makespan = last_end - t0
    total_work = sum(j["duration"] for j in jobs)
    ideal = total_work / len(node_type)
    submitted = list(info.values())
    reference = list_schedule_makespan(submitted, node_type)
    steady, first = admission_latencies(recorder.pods, dict(released))
    settled = latencies_after_first_pods(recorder.pods, dict(released))
    handoff = handoffs(recorder.pods, kubelet.ended, kubelet.added)
    violations = order_violations(recorder.pods, recorder.jobs, info, node_type)
    doubles = double_bookings(recorder.pods)
    created = Counter(e.job_uid for e in recorder.pods if e.type == "ADDED")

    def delta(a, b):
        d = {f"{verb} {res}": int(b[k] - a.get(k, 0)) for k in b for verb, res in [k] if b[k] - a.get(k, 0) > 0}
        return dict(sorted(d.items(), key=lambda kv: -kv[1]))

    def by_verb(d):
        out = defaultdict(int)
        for key, n in d.items():
            out[key.split()[0]] += n
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    drain = delta(mid, after)
    submit_phase = delta(before, mid)
    result = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {_cpus()} CPUs, {platform.python_version()}",
        "nodes": len(node_type), "jobs": len(jobs), "namespaces": args.namespaces, "seed": args.seed,
        "pools": pool_sizes,
        "submit_seconds": round(times["submitted"] - times["submit"], 1),
        "all_queued_seconds": round(times["queued"] - times["submit"], 1),
        "makespan_seconds": round(makespan, 2), "ideal_seconds": round(ideal, 2),
        "makespan_over_ideal": round(makespan / ideal, 3),
        "zero_latency_reference_seconds": round(reference, 2),
        "makespan_over_reference": round(makespan / reference, 3),
        "handoff_latency_explaining_makespan_ms": round(1000 * latency_within(submitted, node_type, makespan), 1),
        "handoff_latency_budget_for_target_ms": round(
            1000 * latency_within(submitted, node_type, TARGET_OVER_IDEAL * ideal), 1),
        "all_succeeded_seconds": round(times["done"] - t0, 2),
        "admission_latency_after_pod_end": {"n": len(steady), "p50": round(percentile(steady, 50), 3),
                                            "p90": round(percentile(steady, 90), 3),
                                            "p99": round(percentile(steady, 99), 3),
                                            "max": round(max(steady, default=float("nan")), 3)},
        "admission_latency_after_pod_end_once_all_nodes_had_a_pod": {
            "n": len(settled), **{f"p{q}": round(percentile(settled, q), 3) for q in (50, 90, 99)},
            "max": round(max(settled, default=float("nan")), 3)},
        "admission_latency_first_pod_per_node": {"n": len(first), "p50": round(percentile(first, 50), 3),
                                                 "p99": round(percentile(first, 99), 3),
                                                 "max": round(max(first, default=float("nan")), 3)},
        "handoff_pod_end_to_next_start": {"n": len(handoff), "mean": round(sum(handoff) / max(1, len(handoff)), 3),
                                          **{f"p{q}": round(percentile(handoff, q), 3) for q in (50, 90, 99)}},
        "watch_relists_seconds_from_t0": [(round(t - t0, 1), path) for t, path in recorder.relists],
        "order_violations": len(violations), "order_violation_examples": violations[:5],
        "double_booked": len(doubles), "double_booked_examples": doubles[:5],
        "fake_kubelet_failed_updates": len(kubelet.errors), "fake_kubelet_failed_examples": kubelet.errors[:3],
        "jobs_with_more_than_one_pod": sum(1 for n in created.values() if n > 1),
        "api_requests_submit_phase_by_verb": by_verb(submit_phase),
        "api_requests_drain_phase_by_verb": by_verb(drain),
        "api_requests_drain_phase": dict(list(drain.items())[:24]),
        **({"api_requests_drain_phase_by_client": by_client} if by_client is not None else {}),
        "operator_when_all_queued": usage_queued,
        "operator_at_end": usage,
        "drain_scheduling_passes": summaries["passes"],
        "drain_operator_admission_latency": summaries["operator_admission_latency"],
        "drain_operator_event_loop_lag": summaries["event_loop_lag"],
        "benchmark_thread_wakeup_lag_ms": {"n": len(lag),
                                           **{f"p{q}": round(percentile(lag, q), 1) for q in (50, 90, 99)},
                                           "max": round(max(lag, default=float("nan")), 1)},
        "drain_cpu_seconds_by_process": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
        "operator_rss_mb_by_second_from_t0": rss[::4],
    }
    print(json.dumps(result, indent=1))
    if args.trace:
        # CLOCK_MONOTONIC is one clock for every process on the machine: these line up with
        # timestamps taken the same way inside the operator.
        pods = [(e.t, e.type, f"{e.namespace}/{e.name}", e.node, e.phase) for e in recorder.pods]
        Path(args.trace).write_text(json.dumps({"ended": kubelet.ended, "added": kubelet.added, "pods": pods}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))

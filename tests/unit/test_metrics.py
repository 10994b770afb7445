"""The operator's Prometheus metrics, read back through their own registry."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from lora_operator.api import Phase
from lora_operator.metrics import METRIC_NAMES, OperatorMetrics, start_metrics_server


@pytest.fixture
def metrics() -> OperatorMetrics:
    return OperatorMetrics()


def test_jobs_by_phase_are_counted_at_each_scrape_with_every_phase_present(metrics: OperatorMetrics) -> None:
    counts = {"Queued": 3, "Running": 2}
    metrics.count_jobs_with(lambda: counts)
    value = metrics.registry.get_sample_value
    assert value("lora_operator_jobs", {"phase": "Running"}) == 2
    counts = {"Running": 1}  # what the operator sees now, read again by the next scrape
    assert value("lora_operator_jobs", {"phase": "Running"}) == 1
    assert value("lora_operator_jobs", {"phase": "Queued"}) == 0
    for phase in Phase:
        assert value("lora_operator_jobs", {"phase": phase.value}) is not None


def test_queue_length_and_gpu_nodes_are_gauges(metrics: OperatorMetrics) -> None:
    metrics.set_queue_length(7)
    metrics.set_gpu_nodes(busy=3, free=5)
    value = metrics.registry.get_sample_value
    assert value("lora_operator_queue_length") == 7
    assert value("lora_operator_gpu_nodes", {"state": "busy"}) == 3
    assert value("lora_operator_gpu_nodes", {"state": "free"}) == 5


def test_admission_counts_and_lands_in_latency_buckets_from_10ms_to_60s(metrics: OperatorMetrics) -> None:
    metrics.observe_admission(0.005)
    metrics.observe_admission(0.2)
    metrics.observe_admission(45.0)
    value = metrics.registry.get_sample_value
    assert value("lora_operator_admissions_total") == 3
    name = "lora_operator_admission_latency_seconds"
    assert value(f"{name}_count") == 3
    assert value(f"{name}_bucket", {"le": "0.01"}) == 1
    assert value(f"{name}_bucket", {"le": "0.25"}) == 2
    assert value(f"{name}_bucket", {"le": "30.0"}) == 2
    assert value(f"{name}_bucket", {"le": "60.0"}) == 3


def test_scheduling_pass_seconds_is_a_histogram_from_a_millisecond(metrics: OperatorMetrics) -> None:
    metrics.pass_seconds.observe(0.0004)
    metrics.pass_seconds.observe(0.03)
    value = metrics.registry.get_sample_value
    name = "lora_operator_scheduling_pass_seconds"
    assert value(f"{name}_count") == 2
    assert value(f"{name}_bucket", {"le": "0.001"}) == 1
    assert value(f"{name}_bucket", {"le": "0.025"}) == 1
    assert value(f"{name}_bucket", {"le": "0.05"}) == 2


def test_retries_and_reconcile_errors_count_by_label(metrics: OperatorMetrics) -> None:
    metrics.count_retry("Crashed")
    metrics.count_retry("Crashed")
    metrics.count_retry("Disrupted")
    metrics.count_reconcile_error("on_job_create")
    value = metrics.registry.get_sample_value
    assert value("lora_operator_retries_total", {"reason": "Crashed"}) == 2
    assert value("lora_operator_retries_total", {"reason": "Disrupted"}) == 1
    assert value("lora_operator_reconcile_errors_total", {"handler": "on_job_create"}) == 1


def test_job_progress_is_published_per_job_and_clamped(metrics: OperatorMetrics) -> None:
    metrics.set_job_progress("team-a", "corgi", 0.42, sps=1.5, loss=0.08)
    metrics.set_job_progress("team-b", "corgi", 1.7)
    value = metrics.registry.get_sample_value
    labels = {"namespace": "team-a", "job": "corgi"}
    assert value("lora_operator_job_progress_ratio", labels) == pytest.approx(0.42)
    assert value("lora_operator_job_steps_per_second", labels) == pytest.approx(1.5)
    assert value("lora_operator_job_loss", labels) == pytest.approx(0.08)
    other = {"namespace": "team-b", "job": "corgi"}
    assert value("lora_operator_job_progress_ratio", other) == 1.0
    assert value("lora_operator_job_loss", other) is None


def test_unknown_speed_or_loss_removes_the_stale_series(metrics: OperatorMetrics) -> None:
    metrics.set_job_progress("ns", "j", 0.1, sps=2.0, loss=0.5)
    metrics.set_job_progress("ns", "j", 0.2)
    labels = {"namespace": "ns", "job": "j"}
    assert metrics.registry.get_sample_value("lora_operator_job_steps_per_second", labels) is None
    assert metrics.registry.get_sample_value("lora_operator_job_loss", labels) is None


def test_forget_job_removes_only_that_jobs_series(metrics: OperatorMetrics) -> None:
    metrics.set_job_progress("ns", "gone", 0.5, sps=1.0, loss=0.1)
    metrics.set_job_progress("ns", "kept", 0.5, sps=1.0, loss=0.1)
    metrics.forget_job("ns", "gone")
    metrics.forget_job("ns", "never-existed")
    value = metrics.registry.get_sample_value
    per_job = (
        "lora_operator_job_progress_ratio", "lora_operator_job_steps_per_second", "lora_operator_job_loss"
    )
    for name in per_job:
        assert value(name, {"namespace": "ns", "job": "gone"}) is None
        assert value(name, {"namespace": "ns", "job": "kept"}) is not None


def test_two_operators_in_one_process_do_not_clash() -> None:
    first, second = OperatorMetrics(), OperatorMetrics(CollectorRegistry())
    first.set_queue_length(1)
    second.set_queue_length(2)
    assert first.registry.get_sample_value("lora_operator_queue_length") == 1
    assert second.registry.get_sample_value("lora_operator_queue_length") == 2


def test_metric_names_are_exactly_the_exposed_families(metrics: OperatorMetrics) -> None:
    metrics.count_retry("Crashed")
    metrics.count_reconcile_error("h")
    metrics.count_jobs_with(dict)  # the controller registers its count at start
    exposed = set()
    for family in metrics.registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        exposed.add(family.name + suffix)
    assert exposed == set(METRIC_NAMES)


def test_metrics_server_serves_the_registry_over_http(metrics: OperatorMetrics) -> None:
    metrics.set_queue_length(4)
    server = start_metrics_server(0, metrics.registry, addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            body = response.read().decode()
    finally:
        server.shutdown()
    assert "lora_operator_queue_length 4.0" in body


def test_event_loop_lag_records_how_long_a_blocked_loop_kept_a_timer_waiting(metrics: OperatorMetrics) -> None:
    import asyncio
    import time

    from lora_operator.loop_lag import probe_loop_lag

    async def scenario() -> None:
        probe = asyncio.create_task(probe_loop_lag(metrics.loop_lag, interval=0.01))
        await asyncio.sleep(0.05)  # a few idle probes
        time.sleep(0.3)  # a handler that holds the loop
        await asyncio.sleep(0.05)
        probe.cancel()

    asyncio.run(scenario())
    value = metrics.registry.get_sample_value
    probes = value("lora_operator_event_loop_lag_seconds_count")
    assert probes >= 3
    assert value("lora_operator_event_loop_lag_seconds_bucket", {"le": "0.1"}) < probes  # the blocked one
    assert value("lora_operator_event_loop_lag_seconds_bucket", {"le": "0.5"}) == probes
    assert value("lora_operator_event_loop_lag_seconds_sum") >= 0.25

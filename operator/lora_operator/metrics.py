"""Prometheus metrics of the operator: the only module that defines them.

Every metric lives in one `OperatorMetrics` object bound to its own
`CollectorRegistry`, never the process-global default one, so unit tests and two
operators in one process (the chaos tests run several) do not clash. The handlers
create one at startup, pass it around, and serve its registry with
`start_metrics_server`.

Per-job series (`namespace`, `job` labels) are removed with `forget_job` once a job
finishes or is deleted, so their cardinality follows the live jobs, not history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from lora_operator.api import Phase

ADMISSION_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
"""From 10 ms (a free node at creation) to a minute (a busy apiserver); slower lands in +Inf."""

PASS_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""A pass over a few jobs takes a millisecond; over thousands, tens of milliseconds."""

LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""An idle loop wakes within a millisecond; a loop held for seconds delays every watch event that long."""

METRIC_NAMES = (
    "lora_operator_jobs",
    "lora_operator_queue_length",
    "lora_operator_admission_latency_seconds",
    "lora_operator_gpu_nodes",
    "lora_operator_retries_total",
    "lora_operator_job_progress_ratio",
    "lora_operator_job_steps_per_second",
    "lora_operator_job_loss",
    "lora_operator_reconcile_errors_total",
    "lora_operator_admissions_total",
    "lora_operator_scheduling_pass_seconds",
    "lora_operator_event_loop_lag_seconds",
)
"""The exposed names (counters with their `_total`); the Grafana dashboard test reads them."""

_JOB_LABELS = ("namespace", "job")
JOBS_HELP = "LoraTrainingJobs by phase."


class JobPhases:
    """`lora_operator_jobs`, counted when Prometheus scrapes: a custom collector reading the
    operator's job views through `count`, instead of a gauge set on every scheduling pass (a
    count over every job, thousands of times a minute under load, for a scrape every 15-30 s).
    Every phase is exported, those without jobs as 0."""

    def __init__(self, count: Callable[[], Mapping[str, int]]) -> None:
        self.count = count

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("lora_operator_jobs", JOBS_HELP, labels=["phase"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.count()
        family = GaugeMetricFamily("lora_operator_jobs", JOBS_HELP, labels=["phase"])
        for phase in sorted({p.value for p in Phase} | set(counts)):
            family.add_metric([phase], counts.get(phase, 0))
        yield family


class OperatorMetrics:
    """All operator metrics, registered in one registry.

    Args:
        registry: Where to register. Default: a new, private `CollectorRegistry`.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_length = Gauge("lora_operator_queue_length", "Jobs waiting for a GPU node.", registry=r)
        self.admission_latency = Histogram(
            "lora_operator_admission_latency_seconds",
            "Seconds from a job becoming admissible (queued, node free) to its trainer pod being created.",
            buckets=ADMISSION_LATENCY_BUCKETS,
            registry=r,
        )
        self.gpu_nodes = Gauge(
            "lora_operator_gpu_nodes", "GPU nodes by state: busy (a trainer holds it) or free.", ["state"],
            registry=r,
        )
        self.retries = Counter(
            "lora_operator_retries", "Retried attempts by reason (Crashed, Disrupted, ...).", ["reason"],
            registry=r,
        )
        self.job_progress = Gauge(
            "lora_operator_job_progress_ratio", "Training progress of a job, 0..1.", _JOB_LABELS, registry=r
        )
        self.job_steps_per_second = Gauge(
            "lora_operator_job_steps_per_second", "Training speed of a job as reported by its trainer.",
            _JOB_LABELS, registry=r,
        )
        self.job_loss = Gauge(
            "lora_operator_job_loss", "Last training loss a job's trainer reported.", _JOB_LABELS, registry=r
        )
        self.reconcile_errors = Counter(
            "lora_operator_reconcile_errors", "Handler runs that raised, by handler.", ["handler"], registry=r
        )
        self.admissions = Counter(
            "lora_operator_admissions", "Jobs admitted to a GPU node (trainer pods created).", registry=r
        )

        self.pass_seconds = Histogram(
            "lora_operator_scheduling_pass_seconds",
            "Seconds one scheduling pass took (ranking the queue, placing jobs, settling its claims).",
            buckets=PASS_SECONDS_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "lora_operator_event_loop_lag_seconds",
            "How late the operator's event loop woke a timer: every watch event (a pod's end, a new job) "
            "waits that long before the operator sees it.",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )

    def count_jobs_with(self, count: Callable[[], Mapping[str, int]]) -> None:
        """Exports `lora_operator_jobs` from `count()` (jobs per phase name, e.g. {"Queued": 3}),
        called at each scrape, from the metrics server's thread."""
        self.registry.register(JobPhases(count))

    def set_queue_length(self, length: int) -> None:
        """Set the number of queued jobs."""
        self.queue_length.set(length)

    def set_gpu_nodes(self, busy: int, free: int) -> None:
        """Set the busy and free GPU node counts."""
        self.gpu_nodes.labels(state="busy").set(busy)
        self.gpu_nodes.labels(state="free").set(free)

    def observe_admission(self, latency_seconds: float) -> None:
        """Count one admission and record how long it took."""
        self.admissions.inc()
        self.admission_latency.observe(max(latency_seconds, 0.0))

    def count_retry(self, reason: str) -> None:
        """Count one retried attempt under its CamelCase reason."""
        self.retries.labels(reason=reason).inc()

    def count_reconcile_error(self, handler: str) -> None:
        """Count one failed handler run."""
        self.reconcile_errors.labels(handler=handler).inc()

    def set_job_progress(
        self, ns: str, job: str, ratio: float, sps: float | None = None, loss: float | None = None
    ) -> None:
        """Publish a job's progress; an unknown speed or loss removes that series instead of faking 0.

        Args:
            ns: The job's namespace.
            job: The job's name.
            ratio: Progress in 0..1 (clamped).
            sps: Steps per second, if known.
            loss: Last loss, if known.
        """
        self.job_progress.labels(ns, job).set(min(max(ratio, 0.0), 1.0))
        for gauge, value in ((self.job_steps_per_second, sps), (self.job_loss, loss)):
            if value is None:
                gauge.remove(ns, job)
            else:
                gauge.labels(ns, job).set(value)

    def forget_job(self, ns: str, job: str) -> None:
        """Remove every per-job series of a finished or deleted job (absent ones are ignored)."""
        for gauge in (self.job_progress, self.job_steps_per_second, self.job_loss):
            gauge.remove(ns, job)


class MetricsServer(NamedTuple):
    """The running HTTP server; `shutdown()` stops it."""

    server: object
    thread: object

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        return self.server.server_port  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()  # type: ignore[attr-defined]
        self.server.server_close()  # type: ignore[attr-defined]


def start_metrics_server(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> MetricsServer:
    """Serve `registry` at http://addr:port/metrics with prometheus_client's own threaded server.

    Args:
        port: TCP port (LORA_METRICS_PORT, default 8080); 0 picks a free one.
        registry: The registry of an `OperatorMetrics`.
        addr: Bind address. Default: all interfaces.

    Returns:
        The server handle.
    """
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread)

"""kopf bindings: the only module that imports kopf. Each handler is a thin shell over the
controller: indexes mirror trainer pods and GPU nodes; events keep the jobs, queue a reconcile
of the job they concern and kick the scheduling loop.

What kopf does here: the watch streams, the indexes of pods and nodes, peering between replicas
(a standby takes over when the active one's record expires), login, Events of its own warnings,
start-up and clean-up. What the operator does itself, and why (bench/RESULTS.md, "Operator at
scale", measured at 1000 and 5000 jobs, and "10000 jobs / 1000 nodes"):

- Jobs are not a kopf index: the job handler keeps them (`JobIndex.saw_job`), and the first
  scheduling pass waits until they are all there (`startup_listing`). kopf holds every
  handler until each object of each indexed resource is indexed, and it stops checking only
  once a new object arrives while that is true. Jobs arrive steadily: while the operator
  starts beside 1000 nodes, every new job got a hold of its own, every job's handler waited,
  and each hold made or dropped woke every waiting handler (a cost per job that grows with the
  jobs): 699 of 10000 jobs Queued in 7 minutes, 0.25 MB per held job. Pods and nodes stay kopf
  indexes: new pods come only after the first pass, and new nodes rarely (a probe in a run of
  1000 nodes and 2000 jobs counted 3000 holds: one per node listed and per job).
- No change-detecting handler (on.create/update/delete/resume), no kopf timer or daemon, and so
  no `kopf.TemporaryError` retries: each of them makes kopf put a finalizer and a
  last-handled-configuration on every job (two metadata patches and two watch events more per
  job: 2020 of the 14114 PATCHes of a 1000-job drain) and keep a second full copy of every job
  beside the slim index, and a timer's filter runs on every event of every job. A deleted job's
  trainer pod goes through its ownerReference, and at once through `Controller.job_gone`.
- Event handlers queue a reconcile and return (`work_queue`): kopf keeps each parsed event (a
  job parses to ~34 KB) until its handler returns, and a burst of thousands of new jobs waiting
  for a thread each held over 300 MB of event bodies. A few workers reconcile; an API error
  backs the job off on its own schedule (`retry_backoff`), a conflict re-reads it.
- One scheduling loop (`controller`) plans over the whole queue in one pass per burst of
  events: admission is a decision about all waiting jobs and free nodes at once, not per job.
- One follow loop (`follow`) reads progress and enforces deadlines and TTLs, instead of a timer
  per job.
- Events are posted through the Kubernetes adapter (`k8s.Kube.post_event`) from the worker
  threads, which do not have kopf's poster (it lives in context variables of kopf's tasks).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from .api import GROUP, VERSION, LoraTrainingJob
from .config import OperatorConfig
from .controller import Controller
from .diagnostics import start_tracemalloc
from .job_index import JobIndex
from .k8s import EventSource, Kube
from .loop_lag import probe_loop_lag
from .metrics import OperatorMetrics, start_metrics_server
from .views import JOB_UID_LABEL, TRAINER_COMPONENT, JobView, gpu_node, slim_pod

log = logging.getLogger(__name__)
JOBS = (GROUP, VERSION, LoraTrainingJob.PLURAL)
TRAINER_PODS = {TRAINER_COMPONENT[0]: TRAINER_COMPONENT[1]}


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff-base at all: kopf compares an object's last handled essence with its new one only
    for change-detecting handlers (on.create/update/delete/resume/field) and daemons or timers.
    This operator registers none of them (tests/unit/test_kopf_settings.py checks the registry),
    yet kopf builds both essences on every watch event of jobs, pods and nodes: a deep copy of
    the spec each time, a pod's env included (bench/RESULTS.md). Both read as absent here, so
    kopf finds no change to act on, which is what it would find with nothing to act on it."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def configure_persistence(settings: kopf.OperatorSettings) -> None:
    """kopf's progress storage in annotations of our group, never the strict status (nothing is
    stored while no handler detects changes), and no diff-base (`NoDiffBase`)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()


def configure_watching(settings: kopf.OperatorSettings, list_chunk: int) -> None:
    """The watch streams: trainer pods selected by the API server, lists in pages of `list_chunk`.

    kopf applies a handler's `labels=` filter on the operator's side: without a selector on the
    stream, the operator would receive, parse and keep a worker for every pod of the cluster (each
    event of every other workload's pod) to drop all but its trainers. A relist (start-up, a
    standby taking over, a watch too old) comes in pages: the whole list of 5000 jobs at once
    parses to ~170 MB of dicts before the first one is indexed."""
    settings.watching.server_timeout = 300
    settings.watching.chunk_size = list_chunk
    settings.watching.label_selectors["", "v1", "pods"] = ",".join(f"{k}={v}" for k, v in TRAINER_PODS.items())


EVENT_SOURCE = "lora-operator"
"""The component of the operator's Events (`From` in `kubectl describe`; kopf's own default is `kopf`)."""


def configure_posting(settings: kopf.OperatorSettings, env: Mapping[str, str] = os.environ) -> None:
    """Events name the operator as their source and its pod (HOSTNAME) as the instance; only
    warnings of kopf's own log go out as Events (the operator posts its own)."""
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = EVENT_SOURCE
    settings.posting.reporting_instance = env.get("POD_NAME") or env.get("HOSTNAME") or EVENT_SOURCE
    settings.posting.event_name_prefix = f"{EVENT_SOURCE}-"


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, pods_index: kopf.Index,
                    nodes_index: kopf.Index, **_: Any) -> None:
    """The controller over its job index and kopf's indexes of pods and nodes, and its loops.
    `memo.watch_namespace` (from `cli`): the one namespace watched, None for all."""
    config = OperatorConfig.from_env()
    if config.tracemalloc:
        start_tracemalloc(config.tracemalloc, config.tracemalloc_frames, config.tracemalloc_seconds)
    configure_persistence(settings)
    configure_posting(settings)
    configure_watching(settings, config.list_chunk)
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 32
    # How long a replica's peering record counts as alive: a standby takes over this long after
    # the active replica died (kill -9 leaves its record behind). kopf's default is 60 s.
    settings.peering.lifetime = config.peering_lifetime
    memo.kopf_settings = settings
    memo.config = config
    metrics = OperatorMetrics()
    kube = Kube.connect(EventSource(EVENT_SOURCE, settings.posting.reporting_instance))
    index = JobIndex(kube.own_writes, None, pods_index, nodes_index)
    memo.controller = Controller(kube, config, metrics, kube.post_event, index,
                                 namespace=memo.get("watch_namespace"))
    memo.metrics_server = start_metrics_server(config.metrics_port, metrics.registry)
    memo.loop_task = asyncio.create_task(memo.controller.loop())
    memo.follow_task = asyncio.create_task(memo.controller.follow_loop())
    memo.workers_task = asyncio.create_task(memo.controller.reconcile_workers())
    memo.lag_task = asyncio.create_task(probe_loop_lag(metrics.loop_lag))


@kopf.on.login()
async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's own login (in-cluster service account, else the kubeconfig) over a session with at
    most LORA_API_CONNECTIONS connections. kopf's built-in session has no limit: when the API server
    is slow, each pending metadata patch and Event post opens a TLS connection of its own, with
    a 256 KB read buffer and OpenSSL state; 860 of them were open 4 s after the nodes of a
    500-job queue were released, memory the heap kept after they closed. Past the limit a
    request waits for a free connection instead."""
    import warnings

    import aiohttp

    info = kopf.login_via_client(memo=memo, **kwargs)
    if info is None:
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        auth = info.as_aiohttp_basic_auth()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=memo.config.api_connections, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(), auth=auth, proxy=info.proxy_url, trust_env=info.trust_env)
    return kopf.AiohttpSession(server=info.server, priority=info.priority, default_namespace=info.default_namespace,
                               expiration=info.expiration, aiohttp_session=session)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    for task in (getattr(memo, name, None) for name in ("loop_task", "follow_task", "workers_task", "lag_task")):
        if task:
            task.cancel()


# The indexes are async on purpose: kopf runs sync handlers in its thread pool, one hop per
# event; they only copy a dict, which the event loop does faster than a thread hand-off.
@kopf.index("", "v1", "pods", labels=TRAINER_PODS)
async def pods_index(labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[str, Any] | None:
    uid = labels.get(JOB_UID_LABEL)
    return {uid: slim_pod(body)} if uid else None


@kopf.index("", "v1", "nodes")
async def nodes_index(name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, Any] | None:
    node = gpu_node(body, memo.config.gpu_resource)
    return {name: node} if node else None


@kopf.on.event(*JOBS)
async def job_changed(uid: str, type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller: Controller = memo.controller
    if type == "DELETED":
        return await controller.job_gone(JobView.of(body))
    if controller.job_event(uid, controller.own_writes.slimmed(body)):
        controller.kick()  # only when what the scheduler sees changed: not for positions or progress
    controller.enqueue(uid)


@kopf.on.event("", "v1", "pods", labels=TRAINER_PODS)
async def trainer_pod_changed(body: kopf.Body, labels: kopf.Labels, type: str | None, memo: kopf.Memo,
                              **_: Any) -> None:
    controller: Controller = memo.controller
    controller.pod_changed(body, deleted=type == "DELETED")
    uid = labels.get(JOB_UID_LABEL)
    if uid:
        controller.enqueue(uid)


@kopf.on.event("", "v1", "nodes")
async def node_changed(type: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    controller: Controller = memo.controller
    changed = controller.node_event(name)  # first, whatever follows: passes list the nodes again after it
    if type == "DELETED":
        for view in list(controller.all_jobs()):
            if view.status.node == name:
                controller.enqueue(view.uid)
    if changed or type == "DELETED":
        controller.kick()  # not for heartbeats: only when the node's scheduling view changed

"""The life of one job after it is created: resolve, suspend, deadline, pod outcomes, results,
TTL and the selected checkpoint. Decisions come from the pure modules (outcome,
status_transitions); this module carries them out through the k8s adapter and storage.

Runs in a worker thread, one job at a time (handlers hold a per-job lock).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from . import status_transitions as st
from .api import FINISHED_PHASES, ConditionType, JobSpec, JobStatus, Phase, Reason, SpecError, resolve_spec, spec_hash
from .config import OperatorConfig
from .confirmed import Confirmed
from .endpoints import EndpointError
from .job_storage import JobStorage, SecretUnusable, secret_name
from .k8s import Conflict, Kube
from .metrics import OperatorMetrics
from .outcome import ActionKind, classify, next_action
from .render import output_prefix
from .results import apply_reports, dataset_is_empty, finalize, read_reports
from .storage import ObjectNotFound, StorageError
from .views import ATTEMPT_LABEL, JobView, pod_active, pod_snapshot

log = logging.getLogger(__name__)

Emit = Callable[[Mapping[str, Any], str, str, str], None]
"""emit(job body, type Normal|Warning, reason, message): posts a Kubernetes Event."""

POD_CREATE_GRACE = timedelta(seconds=30)
"""An admitted job whose pod the watch has not shown yet is given this long before it counts as lost."""


def status_patch(old: JobStatus, new: JobStatus) -> dict[str, Any]:
    """A JSON merge patch turning `old` into `new` (fields that became unset are nulled)."""
    before, after = old.to_resource(), new.to_resource()
    patch: dict[str, Any] = {k: v for k, v in after.items() if before.get(k) != v}
    patch.update({k: None for k in before if k not in after})
    return patch


@dataclass
class Lifecycle:
    """Carries out one job's transitions."""

    kube: Kube
    config: OperatorConfig
    metrics: OperatorMetrics
    emit: Emit
    node_exists: Callable[[str], bool]
    confirmed: Confirmed = field(default_factory=Confirmed)
    """Datasets that passed resolve's checks a moment ago."""
    storage: JobStorage | None = None
    """Each job's storage, with the job's own Secret. Default: one over `kube` and `config`."""

    def __post_init__(self) -> None:
        if self.storage is None:
            self.storage = JobStorage(self.kube, self.config)

    def write(self, job: JobView, new: JobStatus, conditional: bool = True) -> JobStatus:
        """Patches the job's status if it changed; conditional on the resourceVersion read."""
        new = new.model_copy(update={"observed_generation": job.generation})
        patch = status_patch(job.status, new)
        if patch:
            self.kube.patch_job_status(job.namespace, job.name, patch,
                                       job.resource_version if conditional else None)
        return new

    def reconcile(self, job: JobView, pods: Mapping[str, Mapping[str, Any]], now: datetime) -> None:
        """Brings one job one step closer to its desired state.

        Raises:
            Conflict: the job changed meanwhile; the caller reconciles again with a fresh view.
        """
        if job.deleting:
            return self.cancel(job, pods, now)
        if job.status.phase in FINISHED_PHASES:
            return self.housekeep(job, pods, now)
        if job.status.resolved_spec is None:
            return self.resolve(job, now)
        if job.suspend_requested:
            return self.suspend(job, pods, now)
        if job.status.phase is Phase.SUSPENDED:
            self.write(job, st.resumed(job.status, now=now))
            return self.emit(job.body, "Normal", Reason.RESUMED, "spec.suspend cleared; queued again")
        if self.past_deadline(job, now):
            self.delete_pods(job, pods)
            message = f"ran longer than activeDeadlineSeconds={job.spec.get('activeDeadlineSeconds')}"
            self.write(job, st.failed(job.status, reason=Reason.DEADLINE_EXCEEDED, message=message, now=now))
            return self.emit(job.body, "Warning", Reason.DEADLINE_EXCEEDED, message)
        if job.status.phase in (Phase.RUNNING, Phase.PENDING) and job.status.attempt:
            return self.follow_attempt(job, JobSpec.model_validate(job.status.resolved_spec), pods, now)
        return None

    def resolve(self, job: JobView, now: datetime) -> None:
        """Resolves the template and checks what only the operator can check; Queued or Failed."""
        try:
            template = None
            if job.spec.get("template"):
                found = self.kube.get_template(job.namespace, job.spec["template"])
                if found is None:
                    return self.fail(job, Reason.TEMPLATE_NOT_FOUND,
                                     f"spec.template: no LoraTrainingTemplate or ClusterLoraTrainingTemplate "
                                     f"named {job.spec['template']!r}", now)
                template = found.get("spec") or {}
            spec = resolve_spec(dict(job.spec), template)
        except SpecError as err:
            return self.fail(job, Reason.INVALID_SPEC, str(err), now)
        try:
            access = self.storage.access(job.namespace, spec)  # the endpoint first: before any connection
        except EndpointError as err:
            return self.fail(job, Reason.ENDPOINT_NOT_ALLOWED, str(err), now)
        except SecretUnusable as err:
            return self.fail(job, Reason.SECRET_NOT_FOUND, str(err), now)
        uri = spec.dataset.uri if spec.dataset else None
        dataset = ("dataset", access.target, access.access_key, uri)
        if uri and uri.startswith("s3://") and dataset not in self.confirmed:
            try:
                if dataset_is_empty(self.storage.open(uri, job.namespace, spec)):
                    return self.fail(job, Reason.DATASET_EMPTY, f"spec.dataset.uri: {uri} holds no files", now)
                self.confirmed.add(dataset)
            except ObjectNotFound as err:
                return self.fail(job, Reason.DATASET_EMPTY, f"spec.dataset.uri: {uri}: {err} does not exist", now)
            except StorageError as err:
                if err.denied:
                    return self.fail(job, Reason.STORAGE_ACCESS_DENIED, f"spec.dataset.uri: {err} (with the keys of "
                                     f"Secret {job.namespace}/{secret_name(spec, self.config)})", now)
                log.warning("%s: cannot list the dataset yet: %s", job.key, err)
        resolved = spec.to_resource()
        status = job.status.model_copy(update={"resolved_spec": resolved, "spec_hash": spec_hash(spec),
                                               "output": None})
        self.write(job, st.queued(status, position=None, now=now))
        self.emit(job.body, "Normal", Reason.QUEUED, "spec resolved; waiting for a free GPU node")
        return None

    def fail(self, job: JobView, reason: str, message: str, now: datetime) -> None:
        self.write(job, st.failed(job.status, reason=reason, message=message, now=now))
        self.emit(job.body, "Warning", reason, message)

    def suspend(self, job: JobView, pods: Mapping[str, Mapping[str, Any]], now: datetime) -> None:
        self.delete_pods(job, pods)
        if job.status.phase is not Phase.SUSPENDED:
            self.write(job, st.suspended(job.status, now=now))
            self.emit(job.body, "Normal", Reason.SUSPENDED, "spec.suspend is true; the trainer pod was removed")

    def past_deadline(self, job: JobView, now: datetime) -> bool:
        limit = job.spec.get("activeDeadlineSeconds")
        started = job.status.admitted_at
        return bool(limit and started and now - _parse(started) > timedelta(seconds=int(limit)))

    def follow_attempt(self, job: JobView, spec: JobSpec, pods: Mapping[str, Mapping[str, Any]],
                       now: datetime) -> None:
        """Classifies the current attempt's pod and acts on how it ended."""
        attempt = job.status.attempts[-1] if job.status.attempts else None
        pod = pods.get(attempt.pod) if attempt else None
        if pod is None and attempt and attempt.start_time and now - _parse(attempt.start_time) < POD_CREATE_GRACE:
            return None
        node = job.status.node
        outcome = classify(pod_snapshot(pod, node_exists=not node or self.node_exists(node)), now,
                           unschedulable_timeout=self.config.unschedulable_timeout)
        action = next_action(outcome, job.status, spec.retry_policy, now)
        if action.kind is ActionKind.NONE:
            running = pod and pod.get("status", {}).get("phase") == "Running"
            if running and not st.is_true(job.status, ConditionType.RUNNING):
                self.write(job, st.pod_running(job.status, now=now))
                self.emit(job.body, "Normal", Reason.POD_RUNNING, f"training on {node}")
            return None
        status = job.status
        if action.kind is ActionKind.SUCCEED:
            status = self.with_results(job, spec, status)
        status = st.attempt_ended(status, outcome=outcome, action=action, now=now)
        if action.kind is ActionKind.REQUEUE:
            self.metrics.count_retry(str(action.reason))
        self.write(job, status)
        if pod is not None:
            self.kube.delete_pod(job.namespace, pod["metadata"]["name"])
        kind = "Normal" if action.kind is ActionKind.SUCCEED else "Warning"
        self.emit(job.body, kind, str(action.reason), action.message or outcome.message)
        return None

    def with_results(self, job: JobView, spec: JobSpec, status: JobStatus) -> JobStatus:
        prefix = output_prefix(spec, job.namespace, job.name, job.uid)
        if not prefix.startswith("s3://"):
            return status
        try:
            reports = read_reports(self.storage.open(prefix, job.namespace, spec), job.uid)
        except (StorageError, EndpointError) as err:
            log.warning("%s: results not readable: %s", job.key, err)
            return status
        return apply_reports(status, reports, prefix)

    def housekeep(self, job: JobView, pods: Mapping[str, Mapping[str, Any]], now: datetime) -> None:
        """A finished job: no pod left, the selected checkpoint finalized, deleted after its TTL."""
        self.delete_pods(job, pods)
        self.metrics.forget_job(job.namespace, job.name)
        selected = job.spec.get("selectedCheckpoint")
        current = job.status.output.checkpoint if job.status.output else None
        if selected and selected != current and job.status.phase is Phase.SUCCEEDED:
            spec = JobSpec.model_validate(job.status.resolved_spec)
            try:
                store = self.storage.open(output_prefix(spec, job.namespace, job.name, job.uid), job.namespace, spec,
                                          quick=False)
                output = finalize(store, job.uid, selected,
                                  delete_unselected=bool(spec.checkpoints and spec.checkpoints.delete_unselected))
            except (StorageError, EndpointError) as err:
                job_msg = f"spec.selectedCheckpoint: {err}"
                self.write(job, job.status.model_copy(update={"message": job_msg}))
                return self.emit(job.body, "Warning", Reason.CHECKPOINT_SELECTED, job_msg)
            self.write(job, job.status.model_copy(update={"output": output,
                                                          "message": f"{selected} copied to {output.uri}"}))
            self.emit(job.body, "Normal", Reason.CHECKPOINT_SELECTED, f"{selected} copied to {output.uri}")
        ttl = job.spec.get("ttlSecondsAfterFinished")
        done = job.status.completion_time
        if ttl is not None and done and now - _parse(done) >= timedelta(seconds=int(ttl)):
            self.kube.delete_job(job.namespace, job.name)
        return None

    def cancel(self, job: JobView, pods: Mapping[str, Mapping[str, Any]], now: datetime) -> None:
        """The job is being deleted but still there (a foreground deletion, another controller's
        finalizer): its pods go, and an unfinished job reads Cancelled until it is gone."""
        self.delete_pods(job, pods)
        self.metrics.forget_job(job.namespace, job.name)
        if job.status.phase not in FINISHED_PHASES:
            self.write(job, st.cancelled(job.status, now=now))
            self.emit(job.body, "Normal", Reason.CANCELLED, "the job is being deleted; its trainer pod was removed")

    def gone(self, job: JobView, pods: Mapping[str, Mapping[str, Any]]) -> None:
        """The job was deleted (`job` is its last state): its pods go now. Their ownerReference
        would have the garbage collector remove them too, but a round later."""
        self.delete_pods(replace(job, deleting=True), pods)  # its last state may not say it was deleted
        self.metrics.forget_job(job.namespace, job.name)
        if job.status.phase not in FINISHED_PHASES:
            self.emit(job.body, "Normal", Reason.CANCELLED, "the job was deleted; its trainer pod was removed")

    def delete_pods(self, job: JobView, pods: Mapping[str, Mapping[str, Any]]) -> None:
        for name, pod in pods.items():
            if pod["metadata"].get("deletionTimestamp"):
                continue  # already going; deleting it again on every event is a wasted request
            if pod_active(pod) or job.status.phase in FINISHED_PHASES or job.deleting:
                self.kube.delete_pod(job.namespace, name)

    def sync_progress(self, job: JobView, now: datetime) -> None:
        """Reads progress.json / manifest.json of a running job into its status and metrics."""
        if job.status.phase is not Phase.RUNNING or job.status.resolved_spec is None:
            return
        spec = JobSpec.model_validate(job.status.resolved_spec)
        new = self.with_results(job, spec, job.status)
        if new.progress:
            p = new.progress
            self.metrics.set_job_progress(job.namespace, job.name, p.percent / 100, p.steps_per_second, p.loss)
        with contextlib.suppress(Conflict):  # the next tick reads again
            self.write(job, new)


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def attempt_of(pod: Mapping[str, Any]) -> int:
    return int(pod["metadata"].get("labels", {}).get(ATTEMPT_LABEL, 0))

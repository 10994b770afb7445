"""The life of one job after it is created: resolve, suspend, deadline, pod outcomes, results
(and, mixed in, Kueue's attempts: `kueue_attempts`; a finished job's TTL and selected checkpoint:
`finished_jobs`). Decisions come from the pure modules (outcome, status_transitions); this module
carries them out through the k8s adapter and storage.

Runs in a worker thread, one job at a time (the controller holds a per-job lock); every status
write goes through `status_writer`.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from . import multikueue, policy, webhook
from . import status_transitions as st
from .api import FINISHED_PHASES, ConditionType, JobSpec, JobStatus, Phase, Reason, SpecError, resolve_spec, spec_hash
from .api.resolve import template_pod
from .api.status import Attempt, JobOutput
from .config import OperatorConfig
from .confirmed import Confirmed
from .endpoints import EndpointError
from .finished_jobs import FinishedJobs, seconds_past
from .input_checks import DATASET, check_input, missing_input
from .job_storage import JobStorage, SecretUnusable, secret_name
from .k8s import Conflict, Kube, describe_error
from .kueue_attempts import KueueAttempts
from .kueue_positions import KueuePositions
from .metrics import OperatorMetrics
from .outcome import ActionKind, classify, next_action
from .render import output_prefix
from .results import ManifestVersion, Reports, apply_reports, read_reports
from .status_writer import StatusWriter
from .storage import StorageError
from .views import JobView, parse_time, pod_active, pod_snapshot
from .webhook import WebhookSender

log = logging.getLogger(__name__)

Emit = Callable[[Mapping[str, Any], str, str, str], None]
"""emit(job body, type Normal|Warning, reason, message): posts a Kubernetes Event."""

CANCEL_MESSAGE = "spec.cancel is true: cancelled; the checkpoints of finished epochs are kept"
"""The Cancelled condition's message and Event of a job whose spec.cancel was set."""

POD_CREATE_GRACE = timedelta(seconds=30)
"""An admitted job whose pod the watch has not shown yet is given this long before it counts as lost."""


@dataclass
class Lifecycle(KueueAttempts, FinishedJobs):
    """Carries out one job's transitions (those of jobs Kueue admits: `KueueAttempts`; a finished job's
    housekeeping: `FinishedJobs`)."""

    kube: Kube
    config: OperatorConfig
    metrics: OperatorMetrics
    emit: Emit
    node_exists: Callable[[str], bool]
    confirmed: Confirmed = field(default_factory=Confirmed)
    """Datasets that passed resolve's checks a moment ago."""
    storage: JobStorage | None = None
    """Each job's storage, with the job's own Secret. Default: one over `kube` and `config`."""
    statuses: StatusWriter | None = None
    """Writes the job's status. Default: one over `kube`."""
    webhooks: WebhookSender | None = None
    """Delivers spec.notify.webhook in the background. Default: one with config's retry settings."""
    node_gpus: Callable[[], int] = lambda: 1
    """The GPUs of the largest GPU node known: what a Kueue Job asks for (a trainer takes a whole node)."""
    kueue_positions: KueuePositions | None = None
    """The places Kueue's visibility API gave: the waiting jobs' queuePosition (see `KueueAttempts`)."""
    manifests_seen: dict[str, ManifestVersion] = field(default_factory=dict)
    """Running job uid -> the version of the manifest its status holds (`results.manifest_version`):
    `sync_progress` reads manifest.json again only once the trainer wrote another."""

    def __post_init__(self) -> None:
        if self.storage is None:
            self.storage = JobStorage(self.kube, self.config)
        if self.statuses is None:
            self.statuses = StatusWriter(self.kube)
        if self.webhooks is None:
            self.webhooks = WebhookSender() if self.config is None else WebhookSender(
                attempts=self.config.webhook_attempts, backoff_seconds=self.config.webhook_backoff_seconds)

    def reconcile(self, job: JobView, pods: Mapping[str, Mapping[str, Any]], now: datetime) -> None:
        """Brings one job one step closer to its desired state.

        Raises:
            Conflict: the job changed meanwhile; the caller reconciles again with a fresh view.
        """
        if job.status.phase is not Phase.RUNNING:
            self.manifests_seen.pop(job.uid, None)
        if job.deleting:
            return self.cancel(job, pods, now)
        derived = st.derive_phase(job.status.conditions)
        if job.status.phase is not derived:
            return self.correct_phase(job, derived)
        if job.status.phase in FINISHED_PHASES:
            return self.housekeep(job, pods, now)
        if job.cancel_requested:
            return self.cancel_requested(job, pods, now)
        if job.status.resolved_spec is None:
            return self.resolve(job, now)
        if job.suspend_requested:
            return self.suspend(job, pods, now)
        if job.status.phase is Phase.SUSPENDED:
            self.statuses.write(job, st.resumed(job.status, now=now))
            return self.emit(job.body, "Normal", Reason.RESUMED, "spec.suspend cleared; queued again")
        if self.past_deadline(job, now):
            self.delete_pods(job, pods)
            message = f"ran longer than activeDeadlineSeconds={job.spec.get('activeDeadlineSeconds')}"
            return self.fail(job, Reason.DEADLINE_EXCEEDED, message, now)
        queue = (job.status.resolved_spec or {}).get("queueName") if self.config.kueue_enabled else None
        if queue and job.status.phase is Phase.QUEUED:
            return self.wait_for_kueue(job, JobSpec.model_validate(job.status.resolved_spec), queue, now)
        if job.status.phase in (Phase.RUNNING, Phase.PENDING) and job.status.attempt:
            return self.follow_attempt(job, JobSpec.model_validate(job.status.resolved_spec), pods, now)
        return None

    def resolve(self, job: JobView, now: datetime) -> None:
        """Resolves the template and checks what only the operator can check; Queued or Failed."""
        try:
            template, pod = None, None
            if job.spec.get("template"):
                found = self.kube.get_template(job.namespace, job.spec["template"])
                if found is None:
                    return self.fail(job, Reason.TEMPLATE_NOT_FOUND,
                                     f"spec.template: no LoraTrainingTemplate or ClusterLoraTrainingTemplate "
                                     f"named {job.spec['template']!r}", now)
                template, pod = found.get("spec") or {}, template_pod(found, self.config.trainer_pod)
            spec = self.with_kueue_queue(resolve_spec(dict(job.spec), template), job)
        except SpecError as err:
            return self.fail(job, Reason.INVALID_SPEC, str(err), now)
        try:
            access = self.storage.access(job.namespace, spec)  # the endpoint first: before any connection
        except EndpointError as err:
            return self.fail(job, Reason.ENDPOINT_NOT_ALLOWED, str(err), now)
        except SecretUnusable as err:
            return self.fail(job, Reason.SECRET_NOT_FOUND, str(err), now)
        checked = self.check_dataset(job, spec, access)
        if isinstance(checked, tuple):
            return self.fail(job, *checked, now)
        if checked:
            log.warning("%s: cannot list the dataset yet: %s", job.key, checked)
        refused = policy.refusal(spec, self.config) or missing_input(
            spec, lambda uri: self.storage.open(uri, job.namespace, spec), (access.target, access.access_key),
            self.confirmed, self.secret_of(job, spec))
        if refused is not None:
            return self.fail(job, *refused, now)
        resolved = spec.to_resource()
        # output.prefix from the start: kubectl lora logs reads an ended attempt's log under it
        output = JobOutput(prefix=output_prefix(spec, job.namespace, job.name, job.uid))
        status = job.status.model_copy(update={"resolved_spec": resolved, "spec_hash": spec_hash(spec),
                                               "trainer_pod": pod,
                                               "output": output})
        self.statuses.write(job, st.queued(status, position=None, now=now))
        self.emit(job.body, "Normal", Reason.QUEUED, "spec resolved; waiting for a free GPU node")
        return None

    def check_dataset(self, job: JobView, spec: JobSpec, access=None) -> tuple[Reason, str] | str | None:
        """Whether spec.dataset.uri holds files, with the job's own Secret (`input_checks.check_input`):
        None when it does, (reason, message) when it does not or access is denied, the error's text
        when storage could not answer yet."""
        uri = spec.dataset.uri if spec.dataset else None
        if not uri:
            return None
        access = access or self.storage.access(job.namespace, spec)
        return check_input(DATASET, uri, lambda u: self.storage.open(u, job.namespace, spec),
                           (access.target, access.access_key), self.confirmed, self.secret_of(job, spec))

    def secret_of(self, job: JobView, spec: JobSpec) -> str:
        """The job's storage Secret as namespace/name, as input checks name it."""
        return f"{job.namespace}/{secret_name(spec, self.config)}"

    def fail(self, job: JobView, reason: str, message: str, now: datetime) -> None:
        status = st.failed(job.status, reason=reason, message=message, now=now)
        self.statuses.write(job, status)
        self.emit(job.body, "Warning", reason, message)
        self.notify(job, status)

    def notify(self, job: JobView, status: JobStatus) -> None:
        """Queue spec.notify.webhook for a job that just finished; returns at once (the Secret is read
        and the POST sent on the sender's threads)."""
        hook = (job.spec.get("notify") or {}).get("webhook")
        if not hook or not hook.get("secretRef"):
            return
        secret, url_key = hook["secretRef"], hook.get("urlKey") or "url"
        key_key = hook.get("signingKeyKey") or "signingKey"
        body = webhook.completion_body(job.namespace, job.name, job.uid, status.model_dump(by_alias=True,
                                                                                           mode="json"))

        def target() -> tuple[str, bytes] | None:
            data = self.kube.get_secret_data(job.namespace, secret) or {}
            if url_key not in data or key_key not in data:
                log.warning("%s: spec.notify.webhook: Secret %s lacks %s or %s; not sent", job.key, secret,
                            url_key, key_key)
                return None
            return base64.b64decode(data[url_key]).decode().strip(), base64.b64decode(data[key_key])

        self.webhooks.send_to(target, body, job.key)

    def correct_phase(self, job: JobView, derived: Phase) -> None:
        """status.phase is only the summary of the conditions this operator wrote: a phase that
        disagrees with them (a hand-patched Succeeded) is put back, and nothing acts on it."""
        message = (f"status.phase {job.status.phase} does not follow the job's conditions; "
                   f"set back to {derived}")
        self.statuses.write(job, job.status.model_copy(update={"phase": derived}))
        self.emit(job.body, "Warning", Reason.PHASE_CORRECTED, message)

    def defer(self, job: JobView, error: BaseException, now: datetime) -> None:
        """A check of an unresolved job met an API or storage error: Pending, Resolved False,
        with the error in the message (an Event when it is new). The caller retries later."""
        message = f"checks before queueing could not be made yet, retrying: {describe_error(error)}"
        new = st.deferred(job.status, message=message, now=now)
        if st.find_condition(new.conditions, ConditionType.RESOLVED) != st.find_condition(
                job.status.conditions, ConditionType.RESOLVED):
            self.statuses.write(job, new)
            self.emit(job.body, "Warning", Reason.CHECK_DEFERRED, message)

    def unexpected(self, job: JobView, pods: Mapping[str, Mapping[str, Any]], error: BaseException,
                   now: datetime) -> None:
        """An error no rule covers, met while handling an unfinished job: it fails with the error
        named, its pods go, instead of failing the same way on every event and tick."""
        if job.status.phase in FINISHED_PHASES or job.deleting:
            return
        self.delete_pods(job, pods)
        self.fail(job, Reason.UNEXPECTED_ERROR,
                  f"the operator could not handle this job: {describe_error(error)}", now)

    def suspend(self, job: JobView, pods: Mapping[str, Mapping[str, Any]], now: datetime) -> None:
        self.delete_pods(job, pods)
        if job.status.phase is not Phase.SUSPENDED:
            self.statuses.write(job, st.suspended(job.status, now=now))
            self.emit(job.body, "Normal", Reason.SUSPENDED, "spec.suspend is true; the trainer pod was removed")

    def past_deadline(self, job: JobView, now: datetime) -> bool:
        return bool(job.spec.get("activeDeadlineSeconds")) and seconds_past(
            job.status.admitted_at, now, job.spec["activeDeadlineSeconds"], strictly=True)

    def follow_attempt(self, job: JobView, spec: JobSpec, pods: Mapping[str, Mapping[str, Any]],
                       now: datetime) -> None:
        """Classifies the current attempt's pod and acts on how it ended."""
        attempt = job.status.attempts[-1] if job.status.attempts else None
        pod = self.attempt_pod(job, attempt, pods)
        if pod is None and attempt and attempt.start_time and now - parse_time(attempt.start_time) < POD_CREATE_GRACE:
            return None
        node = job.status.node
        outcome = classify(pod_snapshot(pod, node_exists=not node or self.node_exists(node)), now,
                           unschedulable_timeout=self.config.unschedulable_timeout)
        outcome, evicted = self.kueue_outcome(job, spec, pod, outcome)
        action = next_action(outcome, job.status, spec.retry_policy, now)
        if evicted is not None:
            action = replace(action, reason=outcome.reason)
        if action.kind is ActionKind.NONE:
            running = pod and pod.get("status", {}).get("phase") == "Running"
            if running and not st.is_true(job.status, ConditionType.RUNNING):
                self.statuses.write(job, st.pod_running(job.status, now=now))
                self.emit(job.body, "Normal", Reason.POD_RUNNING, f"training on {node}")
            return None
        status = job.status
        if action.kind is ActionKind.SUCCEED:
            reports = self.reports(job, spec)
            status = self.with_results(job, spec, status, reports)
            if reports and reports.manifest and reports.manifest.stopped_early:
                action = replace(action, reason=Reason.STOPPED_EARLY, message=reports.manifest.stopped_early)
        elif evicted is not None:  # the SIGTERM save's progress: its step and how long the save took
            status = self.with_results(job, spec, status)
        status = st.attempt_ended(status, outcome=outcome, action=action, now=now)
        if evicted is not None:  # Queued, with Kueue's reason and conditions
            status = st.kueue_workload(status, replace(evicted, reason=outcome.reason,
                                                       message=evicted.eviction.message), now=now)
        if action.kind is ActionKind.REQUEUE:
            self.metrics.count_retry(str(action.reason))
        self.statuses.write(job, status)
        if pod is not None and pod_goes(job, pod, attempt_over=True):
            self.kube.delete_pod(job.namespace, pod["metadata"]["name"])
        kind = "Normal" if action.kind is ActionKind.SUCCEED else "Warning"
        self.emit(job.body, kind, str(action.reason), action.message or outcome.message)
        if status.phase in FINISHED_PHASES:
            self.notify(job, status)
        return None

    def attempt_pod(self, job: JobView, attempt: Attempt | None,
                    pods: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
        """The attempt's pod; for one MultiKueue ran on a worker cluster, its Job's status in a pod's shape."""
        if attempt is None:
            return None
        pod = pods.get(attempt.pod)
        if pod is None and multikueue.on_worker(attempt.node):
            pod = multikueue.worker_pod(self.kube.get_batch_job(job.namespace, attempt.pod))
        return pod

    def reports(self, job: JobView, spec: JobSpec, seen: ManifestVersion | None = None) -> Reports | None:
        """The trainer's progress and manifest in the job's prefix; None when not readable (logged).
        `seen`: see `read_reports` (None: the manifest is read)."""
        prefix = output_prefix(spec, job.namespace, job.name, job.uid)
        if not prefix.startswith("s3://"):
            return None
        try:
            return read_reports(self.storage.open(prefix, job.namespace, spec), job.uid, seen)
        except (StorageError, EndpointError) as err:
            log.warning("%s: results not readable: %s", job.key, err)
            return None

    def with_results(self, job: JobView, spec: JobSpec, status: JobStatus,
                     reports: Reports | None = None) -> JobStatus:
        """`status` with the trainer's reports applied (read now unless given)."""
        reports = reports or self.reports(job, spec)
        if reports is None:
            return status
        return apply_reports(status, reports, output_prefix(spec, job.namespace, job.name, job.uid))

    def cancel_requested(self, job: JobView, pods: Mapping[str, Mapping[str, Any]], now: datetime) -> None:
        """spec.cancel: the pod goes, the job ends Cancelled with what its finished epochs wrote
        (checkpoints, previews) read into its status; storage keeps them."""
        status = job.status
        if status.resolved_spec is not None:
            status = self.with_results(job, JobSpec.model_validate(status.resolved_spec), status)
        self.delete_pods(job, pods)  # a running pod; an ended one as any finished job's (cleanPodPolicy)
        status = st.cancelled(status, now=now, message=CANCEL_MESSAGE)
        self.statuses.write(job, status)
        self.metrics.forget_job(job.namespace, job.name)
        self.emit(job.body, "Normal", Reason.CANCELLED, CANCEL_MESSAGE)
        self.notify(job, status)

    def cancel(self, job: JobView, pods: Mapping[str, Mapping[str, Any]], now: datetime) -> None:
        """The job is being deleted but still there (a foreground deletion, another controller's
        finalizer): its pods go, and an unfinished job reads Cancelled until it is gone."""
        self.delete_pods(job, pods)
        self.metrics.forget_job(job.namespace, job.name)
        if job.status.phase not in FINISHED_PHASES:
            self.statuses.write(job, st.cancelled(job.status, now=now))
            self.emit(job.body, "Normal", Reason.CANCELLED, "the job is being deleted; its trainer pod was removed")

    def gone(self, job: JobView, pods: Mapping[str, Mapping[str, Any]]) -> None:
        """The job was deleted (`job` is its last state): its pods go now. Their ownerReference
        would have the garbage collector remove them too, but a round later."""
        self.delete_pods(replace(job, deleting=True), pods)  # its last state may not say it was deleted
        self.metrics.forget_job(job.namespace, job.name)
        self.manifests_seen.pop(job.uid, None)
        if job.status.phase not in FINISHED_PHASES:
            self.emit(job.body, "Normal", Reason.CANCELLED, "the job was deleted; its trainer pod was removed")

    def delete_pods(self, job: JobView, pods: Mapping[str, Mapping[str, Any]]) -> None:
        """The job's pods that go (`pod_goes`; its attempts are over once it finished)."""
        for name, pod in pods.items():
            if pod["metadata"].get("deletionTimestamp"):
                continue  # already going; deleting it again on every event is a wasted request
            if pod_goes(job, pod, attempt_over=job.status.phase in FINISHED_PHASES):
                self.kube.delete_pod(job.namespace, name)

    def sync_progress(self, job: JobView, now: datetime) -> None:
        """Reads progress.json of a running job into its status and metrics, and manifest.json when
        the trainer wrote it since the status took it in (`manifests_seen`)."""
        if job.status.phase is not Phase.RUNNING or job.status.resolved_spec is None:
            self.manifests_seen.pop(job.uid, None)
            return
        spec = JobSpec.model_validate(job.status.resolved_spec)
        reports = self.reports(job, spec, self.manifests_seen.get(job.uid))
        if reports is None:
            return
        new = self.with_results(job, spec, job.status, reports)
        if new.progress:
            p = new.progress
            self.metrics.set_job_progress(job.namespace, job.name, p.percent / 100, p.steps_per_second, p.loss)
        try:
            self.statuses.write(job, new)
        except Conflict:
            self.manifests_seen.pop(job.uid, None)  # the next tick reads again, the manifest too
            return
        if reports.version is None:
            self.manifests_seen.pop(job.uid, None)
        else:
            self.manifests_seen[job.uid] = reports.version


def pod_goes(job: JobView, pod: Mapping[str, Any], *, attempt_over: bool) -> bool:
    """Whether the operator deletes `pod` now: a running pod always (it holds a GPU; callers ask once its attempt
    or job ended), an ended one once the job is being deleted, or once its attempt is over with
    spec.cleanPodPolicy All (None keeps it for its log)."""
    return pod_active(pod) or job.deleting or (attempt_over and job.cleans_ended_pods)

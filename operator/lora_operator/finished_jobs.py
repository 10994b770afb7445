"""What a finished job still needs: no running pod left (nor an ended one with spec.cleanPodPolicy
All), the selected checkpoint copied to final/ (and the unselected ones deleted when asked), and
the job deleted once its TTL has passed. Mixed into `lifecycle.Lifecycle`, whose collaborators
(kube, storage, the status writer, emit) it uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import selection
from .api import JobSpec, Phase, Reason
from .api.status import JobOutput
from .endpoints import EndpointError
from .k8s import Kube
from .metrics import OperatorMetrics
from .render import output_prefix
from .results import delete_checkpoints, finalize
from .storage import StorageError
from .views import JobView, parse_time

if TYPE_CHECKING:
    from .job_storage import JobStorage
    from .status_writer import StatusWriter


class FinishedJobs:
    """The housekeeping of finished jobs (see the module's docstring)."""

    kube: Kube
    metrics: OperatorMetrics
    storage: JobStorage | None
    statuses: StatusWriter | None
    emit: Callable[[Mapping[str, Any], str, str, str], None]
    delete_pods: Callable[[JobView, Mapping[str, Mapping[str, Any]]], None]

    def housekeep(self, job: JobView, pods: Mapping[str, Mapping[str, Any]], now: datetime) -> None:
        """A finished job: its pods deleted as `delete_pods` says, the selected checkpoint finalized, deleted after
        its TTL."""
        self.delete_pods(job, pods)
        self.metrics.forget_job(job.namespace, job.name)
        if (job.spec.get("selectedCheckpoint") and job.status.phase in (Phase.SUCCEEDED, Phase.CANCELLED)
                and job.status.resolved_spec is not None):  # cancelled before it was resolved: nothing to select
            self.carry_out_selection(job)
        ttl = job.spec.get("ttlSecondsAfterFinished")
        if ttl is not None and seconds_past(job.status.completion_time, now, ttl):
            self.kube.delete_job(job.namespace, job.name)
        return None

    def carry_out_selection(self, job: JobView) -> None:
        """spec.selectedCheckpoint (a name or auto) copied to final/; with spec.deleteUnselected
        the other checkpoints deleted from storage and dropped from status.checkpoints. Both may
        be set or changed after the run; each reconcile does what is not done yet."""
        spec = JobSpec.model_validate(job.status.resolved_spec)
        status, events = job.status, []  # events: (reason, message) once the status is written
        try:
            choice = selection.choose(job.spec["selectedCheckpoint"], status.checkpoints)
        except ValueError as err:
            return self.note_selection_error(job, str(err))
        output = status.output or JobOutput()
        try:
            store = self.storage.open(output_prefix(spec, job.namespace, job.name, job.uid), job.namespace, spec,
                                      quick=False)
        except (StorageError, EndpointError) as err:
            return self.note_selection_error(job, f"spec.selectedCheckpoint: {err}")
        if choice.name != output.checkpoint:
            try:
                output = finalize(store, job.uid, choice.name)
            except StorageError as err:
                return self.note_selection_error(job, f"spec.selectedCheckpoint: {err}")
            events.append((Reason.CHECKPOINT_SELECTED, f"{choice.why}; copied to {output.uri}"))
        if output.selection != choice.why:
            output = output.model_copy(update={"selection": choice.why})
            status = status.model_copy(update={"output": output, "message": f"{choice.why}; copied to {output.uri}"})
        doomed = selection.unselected(status.checkpoints, choice.name) if job.spec.get("deleteUnselected") else []
        if doomed:
            try:
                delete_checkpoints(store, doomed)
            except StorageError as err:
                return self.note_selection_error(job, f"spec.deleteUnselected: {err}")
            kept = [r for r in status.checkpoints if r.name == choice.name]
            message = f"deleted the unselected checkpoints {', '.join(doomed)}; kept {choice.name}"
            status = status.model_copy(update={"checkpoints": kept, "message": message})
            events.append((Reason.CHECKPOINTS_DELETED, message))
        if status is not job.status:
            self.statuses.write(job, status)
        for reason, message in events:
            self.emit(job.body, "Normal", reason, message)
        return None

    def note_selection_error(self, job: JobView, message: str) -> None:
        if job.status.message != message:  # once, not on every reconcile
            self.statuses.write(job, job.status.model_copy(update={"message": message}))
            self.emit(job.body, "Warning", Reason.CHECKPOINT_SELECTED, message)


def seconds_past(since: str | None, now: datetime, limit: int, *, strictly: bool = False) -> bool:
    """Whether `limit` seconds have passed (more than that with `strictly`) since the RFC 3339
    time `since`; False when it is unset. Compared as numbers: a timedelta of a limit the
    schema allows (up to 2^63-1 s) overflows."""
    if not since:
        return False
    elapsed = (now - parse_time(since)).total_seconds()
    return elapsed > int(limit) if strictly else elapsed >= int(limit)

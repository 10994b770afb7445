"""The changes a person makes to a job (select, cancel, suspend, resume, retrain): checked, applied, and
described in one sentence. The CLI prints the sentence; the dashboard shows it; both show a
refusal's CliError the same way."""

from __future__ import annotations

from collections.abc import Sequence

from ..api.conditions import FINISHED_PHASES
from ..api.status import JobStatus
from ..selection import AUTO
from . import checkpoints, overrides
from .errors import CliError
from .kube import Jobs


def _status(job: dict) -> JobStatus:
    return JobStatus.model_validate(job.get("status") or {})


def select(jobs: Jobs, name: str, checkpoint: str) -> str:
    """Set spec.selectedCheckpoint to one of the job's checkpoints or ``auto``.

    Raises:
        CliError: No such job or checkpoint (the message lists the checkpoints).
    """
    names = checkpoints.checkpoint_names(_status(jobs.get(name)).checkpoints)
    if checkpoint not in (*names, AUTO):
        raise CliError(f"ltj/{name} has no checkpoint {checkpoint!r} (checkpoints: {', '.join(names) or 'none'})")
    jobs.patch_spec(name, {"selectedCheckpoint": checkpoint})
    return f"ltj/{name} selectedCheckpoint set to {checkpoint}"


def suspend(jobs: Jobs, name: str, suspended: bool) -> str:
    """Set spec.suspend; the operator stops the pod, or queues the job again.

    Raises:
        CliError: No such job, or it is finished.
    """
    job = jobs.get(name)
    phase = _status(job).phase
    if phase in FINISHED_PHASES:
        raise CliError(f"ltj/{name} is {phase.value}; only an unfinished job can be "
                       f"{'suspended' if suspended else 'resumed'}")
    if bool(job.get("spec", {}).get("suspend")) == suspended:
        return f"ltj/{name} is already {'suspended' if suspended else 'not suspended'}"
    jobs.patch_spec(name, {"suspend": suspended})
    return (f"ltj/{name} suspended: its trainer pod stops and it keeps its place until resumed" if suspended
            else f"ltj/{name} resumed: it queues again and continues from its last saved state")


def cancel(jobs: Jobs, name: str) -> str:
    """Set spec.cancel; the operator ends the job as Cancelled and keeps its finished epochs.

    Raises:
        CliError: No such job, or it is finished already.
    """
    job = jobs.get(name)
    phase = _status(job).phase
    if phase in FINISHED_PHASES:
        raise CliError(f"ltj/{name} is {phase.value} already; only an unfinished job can be cancelled")
    if not job.get("spec", {}).get("cancel"):
        jobs.patch_spec(name, {"cancel": True})
    return (f"ltj/{name} cancelled: its trainer pod stops; the checkpoints of finished epochs stay in storage "
            f"and in its status (kubectl lora describe {name})")


def retrain(jobs: Jobs, name: str, assignments: Sequence[str], new_name: str | None) -> tuple[str, str]:
    """A new job from a finished one's resolvedSpec with ``path=value`` changes; returns the
    sentence and the new job's name.

    Raises:
        CliError: The job is not finished or has no resolved spec, a change is malformed or gives
            a spec that is not valid (naming the field), or the name is taken or refused.
    """
    source = jobs.get(name)
    status = _status(source)
    if status.phase not in FINISHED_PHASES:
        raise CliError(f"ltj/{name} is {status.phase.value}; retrain a finished job")
    if not status.resolved_spec:
        raise CliError(f"ltj/{name} has no status.resolvedSpec to retrain from")
    spec = overrides.apply_overrides(status.resolved_spec, assignments)
    created = jobs.create(overrides.retrain_body(source, spec, new_name))["metadata"]["name"]
    return f"ltj/{created} created from ltj/{name}", created

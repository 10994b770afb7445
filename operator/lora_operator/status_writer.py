"""The one writer of a LoraTrainingJob's status: every status patch the operator sends goes
through `StatusWriter` (the lifecycle's transitions, the admitter's claims and node-match notes,
the queue-position writer). It stamps what the API conventions ask of each write: the status's
and each changed condition's `observedGeneration`, and a phase written out where it was blank.

The transitions themselves are pure (`status_transitions`); this module only turns a new status
into a JSON merge patch, conditional on the resourceVersion the decision was made on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import JobStatus
from .k8s import Kube
from .views import JobView


def status_patch(old: JobStatus, new: JobStatus) -> dict[str, Any]:
    """A JSON merge patch turning `old` into `new` (fields that became unset are nulled)."""
    # The resolved spec is written once, at resolve; every later status carries it on unchanged.
    # Comparing the dicts is cheap; dumping it twice per write was two thirds of the write's CPU.
    same = {"resolved_spec"} if old.resolved_spec == new.resolved_spec else None
    before, after = old.to_resource(same), new.to_resource(same)
    patch: dict[str, Any] = {k: v for k, v in after.items() if before.get(k) != v}
    patch.update({k: None for k in before if k not in after})
    return patch


def observed(old: JobStatus, new: JobStatus, generation: int | None) -> JobStatus:
    """`new` as observed at `generation`: the status's observedGeneration, and that of each
    condition this write sets or changes. A condition the write leaves alone keeps the generation
    it was set at (Kubernetes' convention: the generation the condition was based upon)."""
    if generation is None:
        return new.model_copy(update={"observed_generation": None})
    before = {c.type: c.model_copy(update={"observed_generation": None}) for c in old.conditions}
    conditions = [c if before.get(c.type) == c.model_copy(update={"observed_generation": None})
                  else c.model_copy(update={"observed_generation": generation}) for c in new.conditions]
    return new.model_copy(update={"observed_generation": generation, "conditions": conditions})


@dataclass
class StatusWriter:
    """Writes job statuses through the Kubernetes adapter."""

    kube: Kube

    def write(self, job: JobView, new: JobStatus, conditional: bool = True) -> JobStatus:
        """Patches the job's status to `new` if it changed; conditional on the resourceVersion
        of `job` (the view the decision was made on). Returns the status as written.

        Raises:
            Conflict: the job changed (or is gone) since `job` was read.
        """
        new = observed(job.status, new, job.generation)
        patch = status_patch(job.status, new)
        if patch and (job.body.get("status") or {}).get("phase") is None:
            patch["phase"] = new.to_resource()["phase"]  # a blank phase parses as Pending: write it out
        if patch:
            self.kube.patch_job_status(job.namespace, job.name, patch,
                                       job.resource_version if conditional else None)
        return new

    def position(self, namespace: str, name: str, position: int, resource_version: str | None) -> None:
        """Writes a waiting job's queuePosition alone: positions change by the thousand per
        admission (see `positions`), so this patch carries nothing else and decides nothing.

        Raises:
            Conflict: the job changed since `resource_version`.
        """
        self.queue_place(namespace, name, {"queuePosition": position}, resource_version)

    def queue_place(self, namespace: str, name: str, fields: dict[str, Any], resource_version: str | None) -> None:
        """Writes a waiting job's queuePosition and/or queue.estimatedStartTime alone (see `position`).

        Raises:
            Conflict: the job changed since `resource_version`.
        """
        self.kube.patch_job_status(namespace, name, fields, resource_version)

"""The one status writer: each write carries the generation of the job it was decided on, on the
status and on every condition it sets or changes; a condition it leaves alone keeps its own."""

from __future__ import annotations

from datetime import UTC, datetime

from lora_operator.status_transitions import queued, suspended
from lora_operator.status_writer import StatusWriter
from lora_operator.views import JobView

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class RecordingKube:
    def __init__(self):
        self.patches: list[tuple[dict, str | None]] = []

    def patch_job_status(self, namespace, name, status, resource_version=None):
        self.patches.append((status, resource_version))


def view(generation: int, status: dict) -> JobView:
    return JobView.of({"metadata": {"uid": "u", "name": "j", "namespace": "ns", "resourceVersion": "7",
                                    "generation": generation, "creationTimestamp": "2026-01-01T00:00:00Z"},
                       "spec": {}, "status": status})


def test_a_write_stamps_the_conditions_it_sets_with_the_jobs_generation_and_leaves_the_others():
    kube = RecordingKube()
    writer = StatusWriter(kube)  # type: ignore[arg-type]
    job = view(1, {})
    written = writer.write(job, queued(job.status, position=None, now=NOW))
    patch, rv = kube.patches[-1]
    assert rv == "7"
    assert patch["observedGeneration"] == 1
    assert [(c["type"], c["observedGeneration"]) for c in patch["conditions"]] == [("Admitted", 1)]
    with_resolved = written.model_copy(update={"conditions": [
        *written.conditions, written.conditions[0].model_copy(update={"type": "Resolved", "status": "True"})]})
    job = view(2, with_resolved.to_resource())  # the user changed the spec
    writer.write(job, suspended(job.status, now=NOW))
    patch, _ = kube.patches[-1]
    assert {c["type"]: c["observedGeneration"] for c in patch["conditions"]} == {
        "Admitted": 2, "Resolved": 1, "Suspended": 2}
    assert patch["observedGeneration"] == 2


def test_a_position_write_carries_the_position_alone_conditional_on_the_version_read():
    kube = RecordingKube()
    StatusWriter(kube).position("ns", "j", 4, "9")  # type: ignore[arg-type]
    assert kube.patches == [({"queuePosition": 4}, "9")]


def test_a_write_leaves_the_carried_resolved_spec_out_of_its_patch_and_unserialized():
    """Every status after resolve carries the resolved spec on: it is not dumped again per write (a
    value no serializer takes shows that), and a new resolved spec is still written."""
    from lora_operator.status_writer import status_patch

    job = view(1, {"phase": "Queued", "resolvedSpec": {"baseModel": {"uri": "s3://m"}}})
    probe = object()  # a value no dump could write
    carried = job.status.model_copy(update={"resolved_spec": {"probe": probe}})
    moved = carried.model_copy(update={"queue_position": 3, "resolved_spec": {"probe": probe}})  # equal, a copy
    assert status_patch(carried, moved) == {"queuePosition": 3}
    changed = job.status.model_copy(update={"resolved_spec": {"baseModel": {"uri": "s3://other"}}})
    assert status_patch(job.status, changed) == {"resolvedSpec": {"baseModel": {"uri": "s3://other"}}}

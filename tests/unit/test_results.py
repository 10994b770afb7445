"""What the operator copies from the trainer's reports onto the job's status."""

from __future__ import annotations

from lora_operator.api import JobStatus
from lora_operator.api.reports import CheckpointEntry, Manifest, ProgressReport, SkippedFile
from lora_operator.api.status import MAX_SKIPPED_SHOWN
from lora_operator.results import Reports, apply_reports

PREFIX = "s3://loras/ns/job/"


def test_progress_checkpoints_and_skipped_files_reach_the_status():
    manifest = Manifest(
        checkpoints=[CheckpointEntry(name="epoch-0001", epoch=1, step=4, format="kohya",
                                     path="checkpoints/epoch-0001/kohya.safetensors", size_bytes=10, sha256="a" * 64,
                                     validation_loss=0.25)],
        skipped=[SkippedFile(file="huge.png", reason="image has 400 MP, above the 100 MP limit")],
    )
    status = apply_reports(JobStatus(), Reports(ProgressReport(step=3, total_steps=4), manifest), PREFIX)
    assert status.progress.percent == 75
    assert status.checkpoints[0].uri == PREFIX + "checkpoints/epoch-0001/kohya.safetensors"
    assert status.checkpoints[0].validation_loss == 0.25
    assert [(s.file, s.reason) for s in status.skipped_files] == [
        ("huge.png", "image has 400 MP, above the 100 MP limit")]
    assert status.to_resource()["skippedFiles"][0]["file"] == "huge.png"


def test_the_step_plan_reaches_the_status():
    plan = "6 images x 10 repeats x 2 epochs / batch 4 = 30 steps"
    status = apply_reports(JobStatus(), Reports(ProgressReport(step=3, total_steps=30, plan=plan), None), PREFIX)
    assert status.to_resource()["progress"]["plan"] == plan


def test_skipped_files_on_the_resource_are_capped_the_manifest_keeps_all():
    manifest = Manifest(skipped=[SkippedFile(file=f"bad{i}.png", reason="corrupt") for i in range(200)])
    status = apply_reports(JobStatus(), Reports(None, manifest), PREFIX)
    assert len(status.skipped_files) == MAX_SKIPPED_SHOWN
    assert status.skipped_files[0].file == "bad0.png"

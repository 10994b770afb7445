"""What the operator copies from the trainer's reports onto the job's status."""

from __future__ import annotations

import pytest

from lora_operator.api import JobStatus
from lora_operator.api.reports import CheckpointEntry, Manifest, ProgressReport, SkippedFile
from lora_operator.api.status import MAX_SKIPPED_SHOWN
from lora_operator.results import Reports, apply_reports, finalize, read_reports
from lora_operator.storage import StorageError, open_store

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


def test_the_measured_save_time_reaches_the_status_and_outlives_an_attempt_that_has_not_saved():
    status = apply_reports(JobStatus(), Reports(ProgressReport(step=9, total_steps=30, state_save_seconds=1.5),
                                                None), PREFIX)
    assert status.to_resource()["progress"]["stateSaveSeconds"] == 1.5
    next_attempt = apply_reports(status, Reports(ProgressReport(step=10, total_steps=30), None), PREFIX)
    assert next_attempt.progress.step == 10 and next_attempt.progress.state_save_seconds == 1.5
    saved_again = apply_reports(next_attempt, Reports(ProgressReport(step=12, total_steps=30,
                                                                     state_save_seconds=0.5), None), PREFIX)
    assert saved_again.progress.state_save_seconds == 0.5


def test_skipped_files_on_the_resource_are_capped_the_manifest_keeps_all():
    manifest = Manifest(skipped=[SkippedFile(file=f"bad{i}.png", reason="corrupt") for i in range(200)])
    status = apply_reports(JobStatus(), Reports(None, manifest), PREFIX)
    assert len(status.skipped_files) == MAX_SKIPPED_SHOWN
    assert status.skipped_files[0].file == "bad0.png"


def write_run(folder, job_uid: str) -> None:
    """What a finished trainer of job `job_uid` leaves under its prefix: progress, manifest, a checkpoint."""
    entry = CheckpointEntry(name="epoch-0002", epoch=2, step=8, format="kohya", size_bytes=3, sha256="b" * 64,
                            path="checkpoints/epoch-0002/kohya.safetensors")
    (folder / "checkpoints/epoch-0002").mkdir(parents=True)
    (folder / entry.path).write_bytes(b"old")
    (folder / "progress.json").write_text(ProgressReport(job_uid=job_uid, step=8, total_steps=8).model_dump_json())
    (folder / "manifest.json").write_text(Manifest(job_uid=job_uid, checkpoints=[entry]).model_dump_json())


def test_reports_another_job_wrote_are_ignored_and_never_finalized(tmp_path):
    """Defense in depth behind the UID in the prefix (issue 26 finding 2): files in a job's prefix that
    another job wrote (a deleted job of the same name) never reach its status or final/."""
    write_run(tmp_path, "deleted-uid")
    store = open_store(tmp_path.as_uri())
    assert read_reports(store, "new-uid") == Reports(None, None)
    with pytest.raises(StorageError, match="checkpoint epoch-0002 is not in this job's manifest"):
        finalize(store, "new-uid", "epoch-0002")
    assert not (tmp_path / "final").exists() and (tmp_path / "checkpoints/epoch-0002/kohya.safetensors").is_file()
    own = read_reports(store, "deleted-uid")
    assert own.progress.step == 8 and own.manifest.checkpoints[0].name == "epoch-0002"
    output = finalize(store, "deleted-uid", "epoch-0002")
    assert output.checkpoint == "epoch-0002" and (tmp_path / "final/kohya.safetensors").read_bytes() == b"old"

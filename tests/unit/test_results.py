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


def progress_json(job_uid: str, step: int, manifest_writes: int | None, attempt: int = 1) -> str:
    return ProgressReport(job_uid=job_uid, attempt=attempt, step=step, total_steps=30,
                          manifest_writes=manifest_writes).model_dump_json()


def manifest_json(job_uid: str, *epochs: int) -> str:
    return Manifest(job_uid=job_uid, checkpoints=[CheckpointEntry(
        name=f"epoch-{e:04d}", epoch=e, step=10 * e, format="kohya", size_bytes=3, sha256="b" * 64,
        path=f"checkpoints/epoch-{e:04d}/kohya.safetensors") for e in epochs]).model_dump_json()


def epochs_of(reports: Reports) -> list[int] | None:
    return None if reports.manifest is None else [c.epoch for c in reports.manifest.checkpoints]


def test_the_manifest_is_read_again_only_once_the_progress_counts_another_write(tmp_path):
    # A running job's follow read both files every interval; the manifest changes a few times a run.
    store = open_store(tmp_path.as_uri())
    (tmp_path / "progress.json").write_text(progress_json("u", 5, 1))
    (tmp_path / "manifest.json").write_text(manifest_json("u", 1))
    first = read_reports(store, "u")
    assert epochs_of(first) == [1] and first.version == (1, 1)
    (tmp_path / "manifest.json").write_text(manifest_json("u", 1, 2))  # written, progress not yet again
    (tmp_path / "progress.json").write_text(progress_json("u", 6, 1))
    same = read_reports(store, "u", seen=first.version)
    assert same.progress.step == 6 and same.manifest is None and same.version == (1, 1)  # not read
    (tmp_path / "progress.json").write_text(progress_json("u", 7, 2))  # the trainer's next progress
    again = read_reports(store, "u", seen=first.version)
    assert epochs_of(again) == [1, 2] and again.version == (1, 2)
    (tmp_path / "progress.json").write_text(progress_json("u", 1, 2, attempt=2))  # a retry counts anew
    assert epochs_of(read_reports(store, "u", seen=again.version)) == [1, 2]
    assert epochs_of(read_reports(store, "u")) == [1, 2]  # seen unknown (the end, a restart): read


def test_a_progress_that_does_not_count_manifest_writes_has_the_manifest_read_every_time(tmp_path):
    # progress.json of a trainer from before the count: readable, and its manifest read as before.
    store = open_store(tmp_path.as_uri())
    (tmp_path / "progress.json").write_text('{"jobUid": "u", "attempt": 1, "step": 5, "totalSteps": 30}')
    (tmp_path / "manifest.json").write_text(manifest_json("u", 1))
    first = read_reports(store, "u")
    assert first.progress.step == 5 and epochs_of(first) == [1] and first.version is None
    (tmp_path / "manifest.json").write_text(manifest_json("u", 1, 2))
    assert epochs_of(read_reports(store, "u", seen=(1, 0))) == [1, 2]


def test_no_progress_yet_reads_the_manifest_once_and_an_unreadable_one_again(tmp_path):
    # The trainer writes progress.json before its first manifest: while there is none, the manifest
    # read once stays current (the scale bench's pods write nothing: one GET a job per interval, not two).
    store = open_store(tmp_path.as_uri())
    nothing = read_reports(store, "u")
    assert nothing == Reports(None, None) and nothing.version is not None
    (tmp_path / "manifest.json").write_text(manifest_json("u", 1))
    assert read_reports(store, "u", seen=nothing.version).manifest is None
    (tmp_path / "progress.json").write_text(progress_json("u", 1, 0))
    (tmp_path / "manifest.json").write_text("{not json")
    broken = read_reports(store, "u", seen=nothing.version)
    assert broken.manifest is None and broken.version is None  # not known: read again next time

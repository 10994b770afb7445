"""The trainer's progress.json counts its manifest.json writes and follows each at once: the operator
reads the manifest only when that count changed (`results.read_reports`)."""

from __future__ import annotations

import io
import json

from lora_operator.api import Manifest, ProgressReport
from lora_operator.api.contract import MANIFEST_KEY, PROGRESS_KEY
from lora_trainer.progress import ManifestWriter, ProgressReporter


def test_each_manifest_write_is_counted_in_a_progress_written_right_after_it():
    written: list[tuple[str, dict]] = []
    progress = ProgressReporter(lambda key, data: written.append((key, json.loads(data))), 1, 30, 3,
                                interval=3600, stream=io.StringIO(), job_uid="u")
    progress.phase("loading")
    manifest = ManifestWriter(lambda key, data: written.append((key, json.loads(data))), Manifest(job_uid="u"),
                              written=progress.manifest_written)
    manifest.write()
    progress.step(1, 1, 0.5)  # throttled: not written
    manifest.write(finished=True)
    assert [key for key, _ in written] == [PROGRESS_KEY, MANIFEST_KEY, PROGRESS_KEY, MANIFEST_KEY, PROGRESS_KEY]
    counts = [ProgressReport.model_validate(data).manifest_writes for key, data in written if key == PROGRESS_KEY]
    assert counts == [0, 1, 2]  # counted from the first progress on, before any manifest
    assert ProgressReport.model_validate(written[-1][1]).step == 1

"""Resume equivalence, NaN loss, the CLI's modes and its exit codes, progress throttling."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import base_spec, write_job
from lora_operator.api import ExitCode
from lora_trainer.cli import main
from lora_trainer.errors import NanLossError
from lora_trainer.progress import ProgressReporter

pytestmark = pytest.mark.trainer


class Crash(Exception):
    pass


def crash_at_step_3(recipe):
    """Makes the run raise `Crash` when it reaches optimizer step 3."""
    step = recipe.progress.step

    def wrapped(n, epoch, loss):
        if n == 3:
            raise Crash
        step(n, epoch, loss)

    recipe.progress.step = wrapped


def test_resumed_run_ends_with_the_same_steps_and_bytes_as_an_uninterrupted_one(train, tmp_path):
    spec = {"training": {"steps": 4, "epochs": 2, "textEncoderLearningRate": 1e-3, "textEncoderRatio": 0.75},
            "dataset": {"flip": True}, "network": {"dropout": 0.1}}
    straight = train(**spec, tmp=tmp_path / "a")
    expected = load_file(tmp_path / "a/work/checkpoints/epoch-0002/kohya.safetensors")
    with pytest.raises(Crash):
        train(**spec, tmp=tmp_path / "b", after_setup=crash_at_step_3)
    assert (tmp_path / "b/out/state/meta.json").is_file()
    resumed = train(**spec, tmp=tmp_path / "b", resume=True)
    assert resumed.start_step == 2
    assert resumed.progress.report.step == straight.progress.report.step == 4
    got = load_file(tmp_path / "b/work/checkpoints/epoch-0002/kohya.safetensors")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    names = [(c.name, c.format) for c in resumed.manifest.manifest.checkpoints]
    assert sorted(names) == [(f"epoch-000{e}", f) for e in (1, 2) for f in ("diffusers", "kohya")]


def test_a_run_never_resumes_from_state_another_job_saved(train, tmp_path):
    """Defense in depth behind the UID in the prefix (issue 26 finding 2): state in the prefix that
    another job wrote (a deleted job of the same name, a misplaced prefix) is not resumed from."""
    spec = {"training": {"steps": 4, "epochs": 2}}
    with pytest.raises(Crash):
        train(**spec, tmp=tmp_path, job_uid="deleted-job", after_setup=crash_at_step_3)
    assert json.loads((tmp_path / "out/state/meta.json").read_text())["job_uid"] == "deleted-job"
    assert json.loads((tmp_path / "out/manifest.json").read_text())["jobUid"] == "deleted-job"
    other = train(**spec, tmp=tmp_path, job_uid="new-job", resume=True)
    assert other.start_step == 0
    assert other.manifest.manifest.job_uid == "new-job"
    assert json.loads((tmp_path / "out/state/meta.json").read_text())["job_uid"] == "new-job"
    same = train(**spec, tmp=tmp_path, job_uid="new-job", resume=True)
    assert same.start_step > 0  # its own state is resumed from


def test_nan_loss_stops_the_run_with_a_nan_error(train):
    def poison(recipe):
        with torch.no_grad():
            next(p for p in recipe.parts.denoiser.parameters() if p.requires_grad).fill_(float("nan"))

    with pytest.raises(NanLossError, match="unetLearningRate"):
        train(after_setup=poison)


def test_nan_loss_exits_with_nan_loss_code(tmp_path, tiny_models, dataset_dir, monkeypatch, capsys):
    from lora_trainer.families.sd15 import SD15Family

    # Forces a NaN at once (the real prediction times NaN, so gradients still flow); the
    # learning-rate-driven NaN runs for real in tests/cluster/test_bad_inputs.py.
    predict = SD15Family.predict
    monkeypatch.setattr(SD15Family, "predict", lambda self, *a: predict(self, *a) * float("nan"))
    spec = base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp_path / "out")
    assert main(["run", str(write_job(tmp_path / "job.yaml", spec))]) == ExitCode.NAN_LOSS
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: training: the loss became nan")


@pytest.mark.parametrize("change,code,named", [
    ({"training": {"epochs": 0}}, ExitCode.BAD_CONFIG, "spec.training.epochs"),
    ({"dataset": {"uri": "file:///nonexistent/data"}}, ExitCode.BAD_DATASET, "dataset.uri"),
    ({"baseModel": {"family": "sd15", "uri": "file:///nonexistent/model"}}, ExitCode.BAD_MODEL, "baseModel.uri"),
    ({"previews": {"sampler": "flow_euler"}}, ExitCode.BAD_CONFIG, "previews.sampler"),
])
def test_user_errors_exit_with_their_code_and_one_line_naming_the_field(tmp_path, tiny_models, dataset_dir, capsys,
                                                                        change, code, named):
    spec = base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp_path / "out", **change)
    assert main(["run", str(write_job(tmp_path / "job.yaml", spec))]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and named in err[-1]


def test_bare_spec_and_storage_folder_stand_in_for_s3(tmp_path, tiny_models, dataset_dir):
    import shutil

    storage = tmp_path / "storage"
    shutil.copytree(dataset_dir, storage / "datasets/corgi")
    spec = base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp_path / "unused")
    spec["dataset"]["uri"] = "s3://datasets/corgi/"
    spec["output"]["uri"] = "s3://loras/team-a"
    job = tmp_path / "bare.yaml"
    job.write_text(json.dumps(spec))
    assert main(["run", str(job), "--storage", str(storage)]) == ExitCode.SUCCESS
    assert (storage / "loras/team-a/default/bare/local/checkpoints/epoch-0001/kohya.safetensors").is_file()


def test_pod_mode_reads_the_spec_and_prefix_from_the_environment(tmp_path, tiny_models, dataset_dir):
    from lora_operator.api import resolve_spec

    spec = base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp_path / "out")
    prefix = (tmp_path / "out/ns/job1/uid-1").as_uri() + "/"
    env = {"LORA_JOB_SPEC": json.dumps(resolve_spec(spec).to_resource()), "LORA_OUTPUT_PREFIX": prefix,
           "LORA_JOB_UID": "uid-1", "LORA_JOB_NAME": "job1", "LORA_ATTEMPT": "2", "LORA_RESUME": "1",
           "LORA_CACHE_DIR": str(tmp_path / "cache")}
    assert main(["run", "--spec-env", "LORA_JOB_SPEC"], env=env) == ExitCode.SUCCESS
    progress = json.loads((tmp_path / "out/ns/job1/uid-1/progress.json").read_text())
    assert progress["attempt"] == 2 and progress["phase"] == "done" and progress["step"] == 2
    assert progress["jobUid"] == "uid-1"
    manifest = json.loads((tmp_path / "out/ns/job1/uid-1/manifest.json").read_text())
    assert manifest["finished"] is True and manifest["jobUid"] == "uid-1"
    with safe_open(str(tmp_path / "out/ns/job1/uid-1/checkpoints/epoch-0001/kohya.safetensors"), "pt") as fh:
        meta = fh.metadata()  # UIs list a LoRA by its title: the job's name, not the trigger phrase
    assert (meta["modelspec.title"], meta["ss_output_name"]) == ("job1", "job1")
    kept = (tmp_path / "out/ns/job1/uid-1/logs/attempt-2.txt").read_text()  # for kubectl lora logs once the pod is gone
    assert "done in" in kept and "checkpoint file(s)" in kept


def test_pod_mode_refuses_a_prefix_that_is_not_its_jobs_own(tmp_path, capsys):
    spec = {"baseModel": {"family": "sd15", "uri": "file:///m"}, "dataset": {"uri": "file:///d"},
            "output": {"uri": (tmp_path / "out").as_uri()}}
    env = {"LORA_JOB_SPEC": json.dumps(spec), "LORA_OUTPUT_PREFIX": (tmp_path / "out/ns/job1/old-uid").as_uri() + "/",
           "LORA_JOB_UID": "uid-2"}
    assert main(["run", "--spec-env", "LORA_JOB_SPEC"], env=env) == ExitCode.BAD_CONFIG
    assert "LORA_JOB_UID" in capsys.readouterr().err


def test_in_a_pod_the_error_alone_is_the_termination_message(tmp_path, capsys):
    log = tmp_path / "termination-log"
    log.write_text("")  # the kubelet creates the file; the trainer fills it
    env = {"LORA_TERMINATION_MESSAGE_PATH": str(log)}
    assert main(["run", str(tmp_path / "missing.yaml")], env=env) == ExitCode.BAD_CONFIG
    assert log.read_text() == ""  # a local run never writes it
    assert main(["run", "--spec-env", "LORA_JOB_SPEC"], env=env) == ExitCode.BAD_CONFIG
    assert log.read_text() == "error: LORA_JOB_SPEC: environment variable is empty or missing\n"
    assert capsys.readouterr().err.endswith(log.read_text())


def test_pod_mode_without_spec_is_a_config_error(capsys):
    assert main(["run", "--spec-env", "LORA_JOB_SPEC"], env={}) == ExitCode.BAD_CONFIG
    assert "LORA_JOB_SPEC" in capsys.readouterr().err


def test_pod_mode_keeps_the_last_lines_of_its_output_in_storage_per_attempt(tmp_path, capsys):
    prefix = (tmp_path / "out/ns/job1").as_uri() + "/"
    env = {"LORA_JOB_SPEC": "{not json", "LORA_OUTPUT_PREFIX": prefix, "LORA_ATTEMPT": "3"}
    assert main(["run", "--spec-env", "LORA_JOB_SPEC"], env=env) == ExitCode.BAD_CONFIG
    printed = capsys.readouterr().err
    kept = (tmp_path / "out/ns/job1/logs/attempt-3.txt").read_text()
    assert "error: LORA_JOB_SPEC: not JSON" in printed and "error: LORA_JOB_SPEC: not JSON" in kept
    assert not (tmp_path / "out/ns/job1/logs/attempt-1.txt").exists()


def test_log_tail_keeps_only_the_last_lines_and_a_traceback_in_flight(tmp_path):
    from lora_operator.storage import open_store
    from lora_trainer.logtail import LogTail

    store = open_store((tmp_path / "p").as_uri() + "/")
    tail = LogTail(store, "logs/attempt-1.txt", max_lines=5, every=3600).start()
    try:
        print("one\ntwo\nthree")
        print("four", end="", file=sys.stderr)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            tail.close()
    finally:
        tail.close()
    kept = store.get_bytes("logs/attempt-1.txt").decode()
    # the last 5 lines: "four" and the 4-line traceback, whose own line starts a line
    assert kept.startswith("four\nTraceback (most recent call last):") and kept.endswith("RuntimeError: boom\n")
    assert "three" not in kept


def test_progress_json_is_throttled_but_written_at_phase_changes():
    import io

    now = [0.0]
    written = []
    reporter = ProgressReporter(lambda key, data: written.append(json.loads(data)), attempt=1, total_steps=10,
                                total_epochs=2, interval=5.0, stream=io.StringIO(), clock=lambda: now[0])
    reporter.phase("training")
    for step in range(1, 11):
        now[0] += 1.0
        reporter.step(step, 1 + (step > 5), 0.5)
    assert [w["step"] for w in written] == [0, 5, 10]
    assert written[-1]["stepsPerSecond"] == pytest.approx(1.0) and written[-1]["etaSeconds"] == 0
    reporter.phase("done")
    assert written[-1]["phase"] == "done"

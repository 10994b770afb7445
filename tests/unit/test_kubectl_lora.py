"""The pure parts of kubectl lora: tables, progress line, --set overrides, checkpoint choice, contact sheet."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from PIL import Image

from lora_operator.api.status import CheckpointRecord, JobOutput, JobStatus, Progress
from lora_operator.kubectl_lora import CliError, main
from lora_operator.kubectl_lora.checkpoints import best_checkpoint, checkpoint_names, choose_record, default_checkpoint
from lora_operator.kubectl_lora.cli import build_parser
from lora_operator.kubectl_lora.objects import StorageOptions
from lora_operator.kubectl_lora.overrides import apply_overrides, parse_value, retrain_body
from lora_operator.kubectl_lora.sheet import LABEL_WIDTH, PAD, contact_sheet
from lora_operator.kubectl_lora.tables import format_age, format_duration, format_table, jobs_table, progress_line
from lora_operator.kubectl_lora.tags import selector, tag_label

SPEC = {
    "baseModel": {"family": "sd15", "uri": "s3://models/tiny-sd15"},
    "dataset": {"uri": "s3://datasets/x/"},
    "output": {"uri": "s3://loras/"},
    "training": {"epochs": 2},
    "selectedCheckpoint": "epoch-0001",
}


def ck(epoch: int, loss: float | None, fmt: str = "kohya") -> CheckpointRecord:
    name = f"epoch-{epoch:04d}"
    return CheckpointRecord(name=name, epoch=epoch, step=epoch * 10, uri=f"s3://b/p/checkpoints/{name}/{fmt}",
                            format=fmt, validation_loss=loss)


def test_format_table_aligns_columns_and_prints_none_as_dash():
    out = format_table(["NAME", "QUEUE"], [["a-long-name", None], ["b", 3]])
    assert out.splitlines() == ["NAME          QUEUE", "a-long-name   -", "b             3"]


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (5, "5s"), (192, "3m12s"), (900, "15m"),
                                               (7500, "2h5m"), (3 * 86400 + 4 * 3600, "3d4h")])
def test_format_duration_is_short_like_kubectl(seconds, text):
    assert format_duration(seconds) == text


def test_list_table_shows_phase_progress_epoch_queue_and_age():
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    running = {"metadata": {"name": "b", "creationTimestamp": "2025-01-01T11:55:00Z"},
               "status": {"phase": "Running",
                          "progress": {"step": 25, "totalSteps": 100, "epoch": 1, "totalEpochs": 4}}}
    queued = {"metadata": {"name": "a", "creationTimestamp": "2025-01-01T11:59:30Z"},
              "status": {"phase": "Queued", "queuePosition": 2}}
    lines = jobs_table([running, queued], now).splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "EPOCH", "QUEUE", "STARTS", "AGE"]
    assert lines[1].split() == ["a", "Queued", "-", "-", "2", "-", "30s"]
    assert lines[2].split() == ["b", "Running", "25%", "1/4", "-", "-", "5m0s"]
    assert format_age(None) == "-"


def test_progress_line_has_step_percent_loss_speed_and_eta():
    status = JobStatus(phase="Running", progress=Progress(step=120, total_steps=800, epoch=2, total_epochs=10,
                                                          loss=0.12345, steps_per_second=3.1, eta_seconds=219))
    assert progress_line(status) == "Running  step 120/800 (15%)  epoch 2/10  loss 0.1235  3.10 it/s  ETA 3m39s"
    assert progress_line(JobStatus(phase="Queued", queue_position=3)) == "Queued  queue position 3"


def test_best_checkpoint_is_the_lowest_validation_loss():
    records = [ck(1, 0.30), ck(2, 0.10), ck(2, None, "diffusers"), ck(3, 0.20)]
    assert best_checkpoint(records) == "epoch-0002"
    assert best_checkpoint([ck(1, None)]) is None
    assert checkpoint_names(records) == ["epoch-0001", "epoch-0002", "epoch-0003"]


def test_default_checkpoint_prefers_selected_then_output_then_last():
    status = JobStatus(checkpoints=[ck(1, 0.3), ck(2, 0.2), ck(3, 0.4)])
    assert default_checkpoint(status, "epoch-0001") == "epoch-0001"
    assert default_checkpoint(status, None) == "epoch-0003"
    status.output = JobOutput(checkpoint="epoch-0002")
    assert default_checkpoint(status, None) == "epoch-0002"
    with pytest.raises(CliError, match="no checkpoints"):
        default_checkpoint(JobStatus(), None)


def test_choose_record_prefers_kohya_and_names_what_exists():
    status = JobStatus(checkpoints=[ck(1, None, "diffusers"), ck(1, None, "kohya")])
    assert choose_record(status, "epoch-0001", None).format == "kohya"
    assert choose_record(status, "epoch-0001", "diffusers").format == "diffusers"
    with pytest.raises(CliError, match=r"no checkpoint 'epoch-0009' \(checkpoints: epoch-0001\)"):
        choose_record(status, "epoch-0009", None)
    with pytest.raises(CliError, match="has no embedding format"):
        choose_record(status, "epoch-0001", "embedding")


@pytest.mark.parametrize(("raw", "value"), [("5e-5", 5e-5), ("1e-4", 1e-4), ("3", 3), ("0.5", 0.5),
                                            ("true", True), ("adamw8bit", "adamw8bit"), ("[a, b]", ["a", "b"])])
def test_set_values_parse_as_yaml_scalars_with_exponent_floats(raw, value):
    assert parse_value(raw) == value


def test_apply_overrides_sets_dotted_camelcase_paths_and_drops_selected_checkpoint():
    out = apply_overrides(SPEC, ["training.unetLearningRate=5e-5", "training.epochs=4", "network.dim=8"])
    assert out["training"] == {"epochs": 4, "unetLearningRate": 5e-5}
    assert out["network"] == {"dim": 8}
    assert "selectedCheckpoint" not in out
    assert SPEC["training"] == {"epochs": 2}  # the source is untouched


def test_apply_overrides_drops_what_belonged_to_the_run():
    out = apply_overrides({**SPEC, "cancel": True, "deleteUnselected": True}, [])
    assert not {"cancel", "deleteUnselected", "selectedCheckpoint"} & set(out)


@pytest.mark.parametrize(("expr", "message"), [
    ("training.epochs", "expected path.to.field=value"),
    ("training..epochs=3", "expected path.to.field=value"),
    ("training.epochs.x=3", "training.epochs is not a map"),
    ("training.unet_learning_rate=1e-4", r"camelCase as in the resource \(training.unetLearningRate\)"),
    ("training.unetLearnRate=1e-4", "spec.training.unetLearnRate"),
])
def test_apply_overrides_rejects_bad_assignments_naming_the_field(expr, message):
    with pytest.raises(CliError, match=message):
        apply_overrides(SPEC, [expr])


def test_retrain_body_generates_a_name_and_records_the_source():
    source = {"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
              "metadata": {"name": "cat", "namespace": "ns", "labels": {"team": "a"}, "uid": "u"}}
    body = retrain_body(source, {"x": 1}, None)
    assert body["metadata"] == {"namespace": "ns", "generateName": "cat-retrain-", "labels": {"team": "a"},
                                "annotations": {"lora-operator.io/retrained-from": "cat"}}
    assert retrain_body(source, {}, "cat2")["metadata"]["name"] == "cat2"


def test_contact_sheet_puts_epochs_in_rows_and_images_in_columns():
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    out = contact_sheet([("epoch 1", [red, red, red]), ("epoch 2", [blue])])
    assert out.size == (LABEL_WIDTH + 3 * (16 + PAD) + PAD, 2 * (16 + PAD) + PAD)
    row1, row2 = PAD + 8, PAD + 16 + PAD + 8
    col = [LABEL_WIDTH + PAD + c * (16 + PAD) + 8 for c in range(3)]
    assert [out.getpixel((x, row1)) for x in col] == [(255, 0, 0)] * 3
    assert out.getpixel((col[0], row2)) == (0, 0, 255)
    assert out.getpixel((col[1], row2)) == (255, 255, 255)
    with pytest.raises(ValueError):
        contact_sheet([("epoch 1", [])])


def test_storage_options_take_flags_over_environment():
    env = {"S3_ENDPOINT": "minio:9000", "AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk", "S3_SECURE": "false"}
    assert StorageOptions.resolve(None, None, None, None, env) == StorageOptions("minio:9000", "ak", "sk", False)
    assert StorageOptions.resolve("other:1", "k", None, True, env) == StorageOptions("other:1", "k", "sk", True)
    assert StorageOptions.resolve(None, None, None, None, {}).secure is True


def test_unreadable_kubeconfig_is_a_one_line_error(tmp_path, capsys):
    assert main(["--kubeconfig", str(tmp_path / "missing"), "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load kubeconfig") and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["-n", "team-a", "list"], ["list", "-n", "team-a"], ["list", "--namespace=team-a"],
    ["--namespace", "team-a", "describe", "j"], ["describe", "j", "-n", "team-a"], ["logs", "j", "-n", "team-a"],
])
def test_namespace_is_taken_before_or_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert args.namespace == "team-a"


def test_flags_before_the_subcommand_are_not_reset_by_it():
    args = build_parser().parse_args(["-n", "a", "--kubeconfig", "k", "--no-s3-secure", "pull", "j"])
    assert (args.namespace, args.kubeconfig, args.s3_secure) == ("a", "k", False)
    args = build_parser().parse_args(["pull", "j", "--s3-endpoint", "m:9000", "--context", "c"])
    assert (args.s3_endpoint, args.context, args.namespace, args.s3_secure) == ("m:9000", "c", None, None)


def test_list_takes_all_namespaces_selector_and_tags():
    args = build_parser().parse_args(["list", "-A", "-l", "team=a", "--tag", "portrait", "--tag", "v2"])
    assert args.all_namespaces and args.selector == "team=a" and args.tag == ["portrait", "v2"]
    assert not build_parser().parse_args(["list"]).all_namespaces


def test_a_flag_given_after_the_subcommand_takes_effect(tmp_path, capsys):
    assert main(["list", "--kubeconfig", str(tmp_path / "missing")]) == 1
    assert "cannot load kubeconfig" in capsys.readouterr().err


def test_tags_are_labels_under_the_tag_prefix_and_join_the_selector():
    assert tag_label("portrait") == "tag.lora-operator.io/portrait"
    assert selector("team=a", ["portrait", "v2"]) == "team=a,tag.lora-operator.io/portrait,tag.lora-operator.io/v2"
    assert selector(None, []) is None and selector(" ", ["x"]) == "tag.lora-operator.io/x"
    for bad in ("has space", "-dash", "a/b", "x" * 64, ""):
        with pytest.raises(CliError, match="a tag is a label name"):
            tag_label(bad)


def test_list_table_with_all_namespaces_has_a_namespace_column_sorted_by_it():
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    jobs = [{"metadata": {"name": n, "namespace": ns, "creationTimestamp": "2025-01-01T11:59:00Z"},
             "status": {"phase": "Queued"}} for ns, n in (("b", "a"), ("a", "z"))]
    lines = jobs_table(jobs, now, all_namespaces=True).splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "PHASE", "PROGRESS", "EPOCH", "QUEUE", "STARTS", "AGE"]
    assert [line.split()[:2] for line in lines[1:]] == [["a", "z"], ["b", "a"]]


def test_logs_takes_an_attempt_and_follow_and_cancel_a_job():
    args = build_parser().parse_args(["logs", "j", "--attempt", "2", "-f"])
    assert (args.job, args.attempt, args.follow) == ("j", 2, True)
    args = build_parser().parse_args(["logs", "j"])
    assert (args.attempt, args.follow) == (None, False)
    assert build_parser().parse_args(["cancel", "j", "-n", "x"]).namespace == "x"


def test_logs_default_to_the_last_attempt_and_name_the_ones_that_exist():
    from lora_operator.api.status import Attempt
    from lora_operator.kubectl_lora.cli import _attempt

    status = JobStatus(attempts=[Attempt(number=1, pod="j-1"), Attempt(number=2, pod="j-2")])
    assert _attempt(status, "j", None).pod == "j-2"
    assert _attempt(status, "j", 1).pod == "j-1"
    with pytest.raises(CliError, match=r"ltj/j has no attempt 7 \(attempts: 1, 2\)"):
        _attempt(status, "j", 7)
    with pytest.raises(CliError, match="has had no trainer pod yet"):
        _attempt(JobStatus(), "j", None)

"""What the dashboard's pages show of a job: the CLI's rows and lines, previews by epoch, the loss series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lora_operator.kubectl_lora.cli import build_parser
from lora_operator.kubectl_lora.errors import CliError
from lora_operator.kubectl_lora.ui import newjob, pages

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def body(**status) -> dict:
    return {"metadata": {"name": "corgi", "namespace": "a", "uid": "u1", "creationTimestamp": "2026-01-01T11:58:00Z"},
            "spec": {"selectedCheckpoint": "epoch-0001"}, "status": status}


def test_summary_has_the_list_cells_the_loss_and_the_estimated_start():
    job = body(phase="Queued", queuePosition=2,
               progress={"step": 4, "totalSteps": 16, "epoch": 1, "totalEpochs": 4, "loss": 0.123456, "etaSeconds": 90})
    summary = pages.job_summary(job, {"u1": NOW + timedelta(minutes=5)}, NOW)
    assert (summary["name"], summary["phase"], summary["progress"], summary["epoch"], summary["queue"]) == (
        "corgi", "Queued", "25%", "1/4", 2)
    assert (summary["percent"], summary["loss"], summary["eta"], summary["age"]) == (25, "0.1235", "1m30s", "2m0s")
    assert (summary["starts"], summary["startsAt"]) == ("~5m0s", "2026-01-01T12:05:00+00:00")
    assert pages.job_summary(body(phase="Running"), {}, NOW)["starts"] is None


def test_detail_groups_previews_by_epoch_and_marks_best_and_selected_checkpoints():
    checkpoints = [{"name": f"epoch-000{e}", "epoch": e, "step": 4 * e, "uri": f"s3://b/p/{e}/{fmt}", "format": fmt,
                    "validationLoss": loss} for e, loss in ((1, 0.3), (2, 0.1)) for fmt in ("kohya", "diffusers")]
    previews = [{"epoch": 2, "prompt": "p", "uris": ["s3://b/p/e2-0.png", "s3://b/p/e2-1.png"]},
                {"epoch": 1, "prompt": "p", "uris": ["s3://b/p/e1-0.png"]}]
    job = body(phase="Succeeded", checkpoints=checkpoints, previews=previews, resolvedSpec={"type": "lora"})
    detail = pages.job_detail(job, [], {}, NOW)
    assert [epoch for epoch, _ in detail["previews"]] == [1, 2]
    assert [im["uri"] for im in detail["previews"][1][1]] == ["s3://b/p/e2-0.png", "s3://b/p/e2-1.png"]
    assert detail["checkpoint_rows"][0][-1] == "(selected)" and detail["checkpoint_rows"][1][-1] == "*"
    assert detail["formats"]["epoch-0002"] == ["kohya", "diffusers"]
    assert detail["finished"] and detail["selectable"] and detail["spec_yaml"] == "type: lora\n"
    assert pages.preview_uris(pages.status_of(job)) == {"s3://b/p/e2-0.png", "s3://b/p/e2-1.png", "s3://b/p/e1-0.png"}
    series = pages.loss_series(pages.status_of(job), [(1, 0.5), (3, 0.4)])
    assert series == {"training": [[1, 0.5], [3, 0.4]], "validation": [[4, 0.3], [8, 0.1]]}


def test_ui_takes_a_port():
    assert build_parser().parse_args(["ui", "--port", "9000", "-n", "x"]).port == 9000
    assert build_parser().parse_args(["ui"]).port == 8765


TEMPLATE = {"kind": "ClusterLoraTrainingTemplate", "metadata": {"name": "sd15-character"},
            "spec": {"description": "character", "type": "lora", "baseModel": {"family": "sd15", "uri": "s3://m/sd15"},
                     "output": {"uri": "s3://loras/"}, "training": {"epochs": 10}}}


def find(name: str) -> dict | None:
    return TEMPLATE if name == "sd15-character" else None


def test_new_job_form_sets_only_the_filled_fields_over_the_template():
    form = {"name": "corgi", "template": "sd15-character", "datasetUri": "s3://datasets/corgi/",
            "captionPrefix": "corgi dog, ", "tagsPrepend": "photo, dog", "epochs": "4", "unetLearningRate": "5e-5",
            "alpha": "8", "prompts": "corgi dog on grass\n\n corgi dog, portrait \n", "dim": ""}
    body = newjob.job_body(form, "team-a", find)
    assert body["metadata"] == {"name": "corgi", "namespace": "team-a"}
    assert body["spec"] == {"template": "sd15-character",
                            "dataset": {"uri": "s3://datasets/corgi/", "captionPrefix": "corgi dog, ",
                                        "tags": {"prepend": ["photo", "dog"]}},
                            "training": {"epochs": 4, "unetLearningRate": 5e-5}, "network": {"alpha": 8.0},
                            "previews": {"prompts": ["corgi dog on grass", "corgi dog, portrait"]}}
    assert newjob.template_choices([TEMPLATE]) == [
        {"name": "sd15-character", "kind": "ClusterLoraTrainingTemplate", "description": "character"}]


@pytest.mark.parametrize(("form", "message"), [
    ({"template": "sd15-character"}, "metadata.name: required"),
    ({"name": "x"}, "spec.template: choose a template"),
    ({"name": "x", "template": "nope"}, "spec.template: no LoraTrainingTemplate or ClusterLoraTrainingTemplate "
                                        "named 'nope'"),
    ({"name": "x", "template": "sd15-character", "epochs": "ten"}, "spec.training.epochs: 'ten' is not a number"),
    ({"name": "x", "template": "sd15-character"}, "spec.dataset.uri: required (set it in the job or in its template)"),
    ({"name": "x", "template": "sd15-character", "datasetUri": "s3://d/", "epochs": "0"}, "spec.training.epochs: "),
])
def test_new_job_form_names_the_field_of_a_bad_input(form, message):
    with pytest.raises(CliError) as err:
        newjob.job_body(form, "team-a", find)
    assert str(err.value).startswith(message)

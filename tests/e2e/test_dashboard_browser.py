"""The dashboard (`kubectl lora ui`) in a real browser: Debian's Chromium driven by Playwright,
against the real local control plane, MinIO, the operator and a real tiny training run.

A job appears on the Jobs page as it is created and its progress moves without a reload (the
page follows a watch); a job queued behind it shows an estimated start and is cancelled from its
page; the preview grid loads every epoch, enlarges and compares; picking an epoch sets
spec.selectedCheckpoint and the operator copies it to final/; a download is the stored file; bad
inputs show the CLI's own message. Screenshots of each page go to the test's output folder.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from lora_operator.kubectl_lora import main as kubectl_lora
from testground.dashboard import start_ui
from testground.kubelet_shim import KubeletShim
from testground.operator import OperatorProcess, install_crds
from testground.procs import free_port
from testground.seed import make_dataset, upload
from testground.tenant import tenant
from tinymodels import build_tiny_model

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`make apt` installs it)"),
]
REPO = Path(__file__).resolve().parents[2]
NS = "ui"
SHOTS_ENV = "LORA_UI_SCREENSHOTS"
"""A folder for the screenshots (default: the test's temporary folder); docs/ui/ holds copies."""


LIVE_STEPS = 64
"""Steps of the job the live test follows: the demo's 8 can all run before its ETA reaches the page (the
operator reads progress every few seconds), and then the job queued behind it never shows an estimate."""


GPU_TYPE = "uidash"
"""The GPU type of this module's one node, which its jobs ask for: nodes that earlier tests left
on the session's ground are free and would otherwise take demo-next, which then never queues."""


def demo_job(name: str, steps: int | None = None) -> dict:
    job = yaml.safe_load((REPO / "examples/demo-job.yaml").read_text())
    job["metadata"] = {"name": name, "namespace": NS}
    job["spec"]["placement"] = {"gpuType": GPU_TYPE}
    if steps:
        job["spec"]["training"]["steps"] = steps
    return job


@pytest.fixture(scope="module")
def dashboard(ground, tmp_path_factory):
    """The operator, the kubelet shim and `kubectl lora ui` for namespace `ui`; yields the URL,
    the screenshot folder and a browser."""
    from playwright.sync_api import sync_playwright

    work = tmp_path_factory.mktemp("dashboard")
    install_crds(ground)
    upload(ground, "s3://models/tiny-sd15/", build_tiny_model("sd15", work / "tiny-sd15"))
    make_dataset(work / "dataset")
    upload(ground, "s3://datasets/demo/", work / "dataset")
    tenant(ground, NS, GPU_TYPE, prefix="ui")
    ui = start_ui(ground, NS, work / "ui.log", port=free_port())
    operator = OperatorProcess(ground, work / "operator.log").start()
    shim = KubeletShim(ground, work / "pods", namespaces=frozenset({NS})).start()
    url = ui.url
    try:
        assert f"Dashboard of namespace {NS}: {url}/" in (work / "ui.log").read_text()
        shots = Path(os.environ.get(SHOTS_ENV) or work / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            yield url, shots, browser
            browser.close()
    finally:
        print(f"\ndashboard logs: {work}; screenshots: {os.environ.get(SHOTS_ENV) or work / 'screenshots'}")
        shim.stop()
        operator.stop()
        ui.stop()


def job(ground, name: str) -> dict:
    return json.loads(ground.kubectl("get", "ltj", name, "-n", NS, "-o", "json").stdout)


def finished(ground, name: str) -> None:
    ground.wait_for(lambda: job(ground, name).get("status", {}).get("phase") in ("Succeeded", "Failed", "Cancelled"),
                    timeout=300, what=f"ltj/{name} finished")


def test_a_job_runs_live_in_the_browser_and_picking_an_epoch_finalizes_it(ground, dashboard):
    url, shots, browser = dashboard
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url + "/")
    page.wait_for_selector("#live.on")
    assert "No LoraTrainingJobs in namespace ui." in page.inner_text("#jobs-rows")

    # Created after the page loaded: the watch brings the row, and its phase, without a reload.
    ground.apply(demo_job("demo", steps=LIVE_STEPS))
    page.wait_for_selector('tr[data-job="demo"]', timeout=30_000)
    page.wait_for_selector('tr[data-job="demo"] td.phase-running', timeout=60_000)
    # One GPU node: demo-next waits behind demo and, once demo reports its ETA, gets an estimated start.
    ground.apply(demo_job("demo-next"))
    page.wait_for_selector('tr[data-job="demo-next"]')
    starts = page.locator('tr[data-job="demo-next"] td.starts')
    page.wait_for_function("""() => {
        const cell = document.querySelector('tr[data-job="demo-next"] td.starts');
        return cell && cell.textContent.trim().startsWith('~');
    }""", timeout=240_000)
    assert page.inner_text('tr[data-job="demo-next"] td:nth-child(2)') == "Queued"
    assert starts.get_attribute("title")  # the estimated time itself
    page.screenshot(path=shots / "jobs.png", full_page=True)

    # demo-next is cancelled from its page, after a confirmation.
    other = browser.new_page()
    other.on("dialog", lambda dialog: dialog.accept())
    other.goto(url + "/jobs/demo-next")
    other.click("#cancel")
    other.wait_for_selector("#message.ok")
    assert other.inner_text("#message").startswith("ltj/demo-next cancelled: its trainer pod stops")
    assert job(ground, "demo-next")["spec"]["cancel"] is True
    other.close()

    # The Job page follows demo's progress without a reload.
    page.goto(url + "/jobs/demo")
    seen = set()
    for _ in range(3000):
        seen.add(page.inner_text("#progress-line"))
        if page.inner_text("#phase") in ("Succeeded", "Failed"):
            break
        page.wait_for_timeout(100)
    assert page.inner_text("#phase") == "Succeeded", job(ground, "demo")["status"]
    steps = {line.split("step ")[1].split(" ")[0] for line in seen if "step " in line}
    assert len(steps) >= 2 and f"{LIVE_STEPS}/{LIVE_STEPS}" in steps, seen  # it moved, and ended at the last step
    finished(ground, "demo-next")
    assert job(ground, "demo-next")["status"]["phase"] == "Cancelled"

    # The preview grid: one column per epoch, every image loaded from MinIO.
    page.wait_for_function("document.querySelectorAll('#preview-grid figure.epoch').length == 2")
    images = page.locator("#preview-grid img")
    page.wait_for_function("""() => [...document.querySelectorAll('#preview-grid img')]
        .every(im => im.complete && im.naturalWidth > 0)""")
    assert images.count() == 2
    assert page.locator("#loss-chart canvas").count() == 1
    assert int(page.get_attribute("#loss-chart", "data-points")) >= 2  # training loss + a validation loss
    page.screenshot(path=shots / "job.png", full_page=True)
    images.first.click()
    page.wait_for_selector("#viewer[open] img.large")
    page.screenshot(path=shots / "job-enlarged.png")
    page.click("#viewer button.close")
    page.check('.compare-pick[value="1"]')
    assert page.is_disabled("#compare")
    page.check('.compare-pick[value="2"]')
    page.click("#compare")
    page.wait_for_function("document.querySelectorAll('#viewer[open] .compare figure').length == 2")
    page.screenshot(path=shots / "job-compare.png")
    page.click("#viewer button.close")

    # Download: the very bytes stored for epoch-0002's kohya file.
    uid = job(ground, "demo")["metadata"]["uid"]
    stored = ground.minio.client().get_object("loras", f"{NS}/demo/{uid}/checkpoints/epoch-0002/kohya.safetensors")
    with page.expect_download() as download:
        page.click('tr[data-checkpoint="epoch-0002"] a.download:text-is("kohya")')
    assert Path(download.value.path()).read_bytes() == stored.read()

    # Pick epoch 1: a confirmation, then the resource changes and the operator copies it to final/.
    questions = []
    page.on("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    page.click('tr[data-checkpoint="epoch-0001"] button.pick')
    page.wait_for_selector("#message.ok")
    assert questions == ["Pick epoch-0001 for demo? The operator copies it to final/."]
    assert page.inner_text("#message") == "ltj/demo selectedCheckpoint set to epoch-0001"
    assert job(ground, "demo")["spec"]["selectedCheckpoint"] == "epoch-0001"
    page.wait_for_selector("#final", timeout=60_000)
    assert "epoch-0001" in page.inner_text("#final")
    final = [o.object_name for o in ground.minio.client().list_objects("loras", prefix=f"{NS}/demo/{uid}/final/",
                                                                       recursive=True)]
    assert f"{NS}/demo/{uid}/final/kohya.safetensors" in final
    page.screenshot(path=shots / "job-picked.png", full_page=True)
    page.close()


def test_bad_inputs_show_the_cli_message_and_change_nothing(ground, dashboard, capsys):
    url, shots, browser = dashboard
    finished(ground, "demo")
    page = browser.new_page()
    response = page.goto(url + "/jobs/no-such-job")
    assert response.status == 404
    assert page.inner_text("#error") == "ltj/no-such-job not found in namespace ui"
    page.screenshot(path=shots / "error.png")

    page.goto(url + "/jobs/demo")
    before = job(ground, "demo")["spec"].get("selectedCheckpoint")
    page.on("dialog", lambda dialog: dialog.accept())
    page.fill("#checkpoint-input", "epoch-0099")
    page.click(".select-form button")
    page.wait_for_selector("#message.error")
    flags = ["--kubeconfig", str(ground.kubeconfig), "-n", NS]
    assert kubectl_lora(["select", "demo", "epoch-0099", *flags]) == 1
    cli_says = capsys.readouterr().err.strip().removeprefix("error: ")
    assert page.inner_text("#message") == cli_says
    assert cli_says.startswith("ltj/demo has no checkpoint 'epoch-0099' (checkpoints: epoch-0001, epoch-0002")
    # A finished job cannot be cancelled: the page offers no button, and a direct request is refused
    # with the CLI's sentence.
    assert page.locator("#cancel").count() == 0
    refused = page.request.post(url + "/jobs/demo/cancel")
    assert refused.status == 400
    assert refused.json() == {"error": "ltj/demo is Succeeded already; only an unfinished job can be cancelled"}
    assert job(ground, "demo")["spec"].get("selectedCheckpoint") == before
    assert "cancel" not in job(ground, "demo")["spec"]

    # Retrain with changes: a bad change gets the CLI's message and creates nothing; a good one
    # creates the new job from the resolved spec and goes to its page.
    page.fill("#retrain-set", "training.epochs=zero")
    page.click("#retrain-button")
    page.wait_for_function("document.querySelector('#message').textContent.startsWith('spec.training.epochs')")
    assert kubectl_lora(["retrain", "demo", "--set", "training.epochs=zero", *flags]) == 1
    assert page.inner_text("#message") == capsys.readouterr().err.strip().removeprefix("error: ")
    page.fill("#retrain-set", "network.dim=8\ntraining.epochs=1")
    page.fill("#retrain-name", "demo-dim8")
    page.click("#retrain-button")
    page.wait_for_url(url + "/jobs/demo-dim8")
    ground.kubectl("patch", "ltj", "demo-dim8", "-n", NS, "--type=merge", "-p", '{"spec":{"cancel":true}}')
    retrained = job(ground, "demo-dim8")
    assert retrained["metadata"]["annotations"]["lora-operator.io/retrained-from"] == "demo"
    assert retrained["spec"]["network"]["dim"] == 8 and retrained["spec"]["training"]["epochs"] == 1
    finished(ground, "demo-dim8")
    page.close()


def test_a_job_created_from_the_new_job_form_runs_to_succeeded(ground, dashboard):
    url, shots, browser = dashboard
    template = demo_job("tiny-demo")
    template.update(kind="LoraTrainingTemplate")
    template["spec"]["description"] = "the demo's tiny SD1.5 run"
    ground.apply(template)

    def jobs() -> list[str]:
        return sorted(j["metadata"]["name"] for j in json.loads(
            ground.kubectl("get", "ltj", "-n", NS, "-o", "json").stdout)["items"])

    before = jobs()
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.goto(url + "/")
    page.click("#new-link")
    page.wait_for_selector("#new-job")
    page.select_option("#template", "tiny-demo")
    assert "the demo's tiny SD1.5 run" in page.inner_text("#template")

    # Bad inputs: the field named, nothing created.
    page.fill("#name", "from-form")
    page.fill("#epochs", "one")
    page.click("#create")
    page.wait_for_selector("#message.error")
    assert page.inner_text("#message") == "spec.training.epochs: 'one' is not a number"
    page.fill("#epochs", "1")
    page.fill("#name", "Not_A_Name")
    page.click("#create")
    page.wait_for_function("document.querySelector('#message').textContent.includes('Not_A_Name')")
    refusal = page.inner_text("#message")
    assert refusal.startswith("API server refused: 422") and "metadata.name" in refusal, refusal
    missing = page.request.post(url + "/new", data={"name": "x", "template": "no-such-template"})
    assert missing.status == 400
    assert missing.json() == {
        "error": "spec.template: no LoraTrainingTemplate or ClusterLoraTrainingTemplate named 'no-such-template'"}
    assert jobs() == before

    # A good one: one epoch, its own preview prompt; the page goes to the new job, which trains.
    page.fill("#name", "from-form")
    page.fill("#prompts", "TKXW, a corgi")
    page.screenshot(path=shots / "new.png", full_page=True)
    page.click("#create")
    page.wait_for_url(url + "/jobs/from-form")
    spec = job(ground, "from-form")["spec"]
    defaults = {"priority": 0, "suspend": False}  # the CRD's, filled in by the API server
    assert spec == {"template": "tiny-demo", "training": {"epochs": 1}, "previews": {"prompts": ["TKXW, a corgi"]},
                    **{k: v for k, v in defaults.items() if k in spec}}
    page.wait_for_function("document.querySelector('#phase').textContent.trim() == 'Succeeded'", timeout=300_000)
    status = job(ground, "from-form")["status"]
    assert sorted({c["name"] for c in status["checkpoints"]}) == ["epoch-0001"]
    assert [p["prompt"] for p in status["previews"]] == ["TKXW, a corgi"]
    page.close()


def test_a_dataset_folder_uploads_from_the_new_job_page_and_a_bad_one_gets_the_cli_message(
        ground, dashboard, tmp_path, monkeypatch, capsys):
    """The New job page's folder upload: a folder with a non-image shows `lora-train upload`'s own
    message and uploads nothing; a good folder shows the dataset report, then lands under the
    Dataset URI in MinIO."""
    from lora_trainer.cli import main as lora_train

    url, shots, browser = dashboard
    prefix = f"upload-{uuid.uuid4().hex[:8]}"
    client = ground.minio.client()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.png").write_text("not an image")
    make_dataset(tmp_path / "drawings", count=3)
    template = demo_job("upload-demo")
    template.update(kind="LoraTrainingTemplate")
    ground.apply(template)  # the New job form shows once a template exists
    page = browser.new_page()
    page.goto(url + "/new")
    page.fill("#datasetUri", f"s3://datasets/{prefix}/")
    page.set_input_files("#folder", str(tmp_path / "notes"))
    page.click("#check-folder")
    page.wait_for_selector("#message.error")
    monkeypatch.chdir(tmp_path)  # the CLI names the folder as given; the page, by its name
    assert lora_train(["upload", "notes", f"s3://datasets/{prefix}/", "--dry-run"], env={}) != 0
    cli_says = capsys.readouterr().err.strip().splitlines()[-1]
    assert page.inner_text("#message") == cli_says
    assert cli_says.startswith("error: no usable image in dataset folder notes: notes.png")
    assert not list(client.list_objects("datasets", prefix=prefix + "/", recursive=True))

    page.goto(url + "/new")
    page.fill("#datasetUri", f"s3://datasets/{prefix}/")
    page.set_input_files("#folder", str(tmp_path / "drawings"))
    page.click("#check-folder")
    page.wait_for_selector("#message.ok")
    assert "drawings: 3 usable image(s)" in page.inner_text("#dataset-report")
    assert not list(client.list_objects("datasets", prefix=prefix + "/", recursive=True))
    page.screenshot(path=shots / "upload.png", full_page=True)
    page.click("#send-folder")
    page.wait_for_function("document.querySelector('#message').textContent.startsWith('uploaded to')")
    keys = {o.object_name for o in client.list_objects("datasets", prefix=prefix + "/", recursive=True)}
    assert keys == {f"{prefix}/{p.name}" for p in (tmp_path / "drawings").iterdir()}
    page.close()

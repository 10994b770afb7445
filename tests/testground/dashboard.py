"""`kubectl lora ui` on a test ground, and the check, in Debian's Chromium, that its pages show a job.

`make demo` (examples/demo.py) ends with this check on its own job and tests/e2e/test_demo_dashboard.py
runs the very same functions, so the test fails where the demo would: the Jobs page must list the job
as Succeeded, and the job's page must load every epoch's preview images, each epoch's column the job's
preview prompts at each of its seeds (the demo's contact sheet row of that epoch). It lives in the test ground,
next to the operator and kubelet-shim helpers the demo already borrows, because the tests import from
here and not from examples/.
"""

from __future__ import annotations

import shlex
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lora_operator.api import Previews, Training
from lora_operator.kubectl_lora.cli import UI_PORT

from .ground import Ground
from .procs import Proc, free_port, wait_until


class DashboardError(RuntimeError):
    """The dashboard did not start, or did not show what it should."""


def ui_args(ground: Ground, namespace: str, port: int) -> list[str]:
    """The arguments after `kubectl lora` that show `namespace` of `ground` on 127.0.0.1:`port`."""
    m = ground.minio
    args = ["ui", "--kubeconfig", str(ground.kubeconfig), "-n", namespace, "--s3-endpoint", m.endpoint,
            "--access-key", m.access_key, "--secret-key", m.secret_key, "--no-s3-secure"]
    return args + (["--port", str(port)] if port != UI_PORT else [])  # the printed command as a user types it


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Ui:
    """A running `kubectl lora ui`."""

    args: list[str]
    url: str
    proc: Proc

    @property
    def command(self) -> str:
        """The command a person types for the same page."""
        return shlex.join(["kubectl", "lora", *self.args])

    def stop(self) -> None:
        self.proc.stop()


def start_ui(ground: Ground, namespace: str, log: Path, port: int | None = None, timeout: float = 60) -> Ui:
    """Start `kubectl lora ui` for `namespace` on `port` (None: the default port where it is free, else a
    free one) and wait until its Jobs page answers.

    Raises:
        DashboardError: It exited or did not answer within `timeout` seconds (with its log's end).
    """
    if port is None:
        port = UI_PORT if _port_is_free(UI_PORT) else free_port()
    args = ui_args(ground, namespace, port)
    proc = Proc("kubectl-lora-ui", [sys.executable, "-m", "lora_operator.kubectl_lora", *args], log).start()
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if not proc.alive():
            return True  # stop waiting: reported below
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_until(answers, timeout, f"the dashboard at {url}/", interval=0.3)
        if not proc.alive():
            raise TimeoutError("it exited")
    except TimeoutError as e:
        proc.stop()
        raise DashboardError(f"`kubectl lora ui` did not serve {url}/ ({e}):\n{proc.tail()}") from None
    return Ui(args, url, proc)


def preview_samples(spec: dict) -> tuple[list[str], list[int]]:
    """The samples a job's previews draw every epoch: (prompts, seeds), each prompt at seed, seed + 1, ...
    for imagesPerPrompt images, as lora_trainer/previews.py draws them."""
    previews = Previews.model_validate(spec.get("previews") or {})
    return list(previews.prompts), [previews.seed + i for i in range(previews.images_per_prompt)]


def preview_epochs(spec: dict) -> list[int]:
    """The epochs a job's previews are drawn at: every previews.everyEpochs and the last."""
    epochs = (spec.get("training") or {}).get("epochs", Training.model_fields["epochs"].default)
    every = Previews.model_validate(spec.get("previews") or {}).every_epochs
    return [e for e in range(1, epochs + 1) if every and (e % every == 0 or e == epochs)]


@dataclass
class Seen:
    """What the browser saw of a job.

    Attributes:
        url: The dashboard's address.
        job: The job's name.
        phase: Its phase on the Jobs page.
        previews: Epoch -> the prompt (the image's title) of each loaded preview image, in page order.
        jobs_shot: Screenshot of the Jobs page.
        job_shot: Screenshot of the job's page.
    """

    url: str
    job: str
    phase: str
    previews: dict[int, list[str]]
    jobs_shot: Path
    job_shot: Path


def check_job_shown(url: str, job: str, spec: dict, shots: Path, timeout: float = 60) -> Seen:
    """Open `url` in Debian's Chromium: the Jobs page must list `job` as Succeeded and its page must load
    the preview images of every epoch of `spec` (the job's), each epoch's column showing the spec's preview
    prompts at each of its seeds (the samples of the demo's contact sheet row of that epoch); screenshots
    go to `shots` (dashboard-jobs.png, dashboard-job.png).

    Raises:
        DashboardError: A page did not show that within `timeout` seconds (saying which).
    """
    import shutil

    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise DashboardError("Debian's chromium is not installed (`make apt` installs it)")
    shots.mkdir(parents=True, exist_ok=True)
    prompts, seeds = preview_samples(spec)
    wanted = {e: [p for p in prompts for _ in seeds] for e in preview_epochs(spec)}
    ms = int(timeout * 1000)
    row = f'tr[data-job="{job}"]'
    step = "opening the Jobs page"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/", timeout=ms)
            step = f"the Jobs page listing ltj/{job} as Succeeded"
            page.wait_for_selector(f"{row} td.phase-succeeded", timeout=ms)
            phase = page.inner_text(f"{row} td.phase").strip()
            page.screenshot(path=shots / "dashboard-jobs.png", full_page=True)
            step = f"ltj/{job}'s page with the loaded preview images of epochs {sorted(wanted)}"
            page.goto(f"{url}/jobs/{job}", timeout=ms)
            page.wait_for_function(
                """([epochs]) => {
                    const columns = document.querySelectorAll('#preview-grid figure.epoch');
                    const images = [...document.querySelectorAll('#preview-grid img')];
                    return columns.length == epochs && images.length > 0
                        && images.every(im => im.complete && im.naturalWidth > 0);
                }""", arg=[len(wanted)], timeout=ms)
            shown = page.eval_on_selector_all("#preview-grid figure.epoch", """columns => Object.fromEntries(
                columns.map(c => [c.dataset.epoch, [...c.querySelectorAll('img')].map(im => im.title)]))""")
            page.screenshot(path=shots / "dashboard-job.png", full_page=True)
        except PlaywrightError as e:
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DashboardError(f"the dashboard at {url}/ did not show {step}: {first_line}") from None
        finally:
            browser.close()
    previews = {int(k): v for k, v in shown.items()}
    if previews != wanted:
        raise DashboardError(f"the dashboard at {url}/ shows the previews {previews} of ltj/{job}, not its "
                             f"preview prompts at seeds {seeds} every epoch: {wanted}")
    return Seen(url, job, phase, previews, shots / "dashboard-jobs.png", shots / "dashboard-job.png")

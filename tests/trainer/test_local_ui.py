"""`lora-train ui --storage DIR`: the dashboard's pages over a real tiny local run's output folder,
served by the real command (it runs the plugin's local dashboard as a program)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from conftest import base_spec, write_job
from lora_trainer.cli import main
from testground.procs import free_port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def serve(storage: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "lora_trainer.cli", "ui", "--storage", str(storage),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return proc
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read().decode()) from None
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("lora-train ui did not answer")


def test_lora_train_ui_shows_a_local_runs_progress_checkpoints_and_downloads(tmp_path, tiny_models, dataset_dir):
    storage = tmp_path / "store"
    spec = base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp_path / "unused")
    spec["output"] = {"uri": "s3://loras/"}
    job = write_job(tmp_path / "job.yaml", spec, name="cat")
    assert main(["run", str(job), "--storage", str(storage)], env={}) == 0
    port = free_port()
    proc = serve(storage, port)
    try:
        base = f"http://127.0.0.1:{port}"
        status, page = get(base + "/")
        assert status == 200 and b"cat" in page and b"Succeeded" in page
        status, page = get(base + "/jobs/cat")
        assert status == 200 and b"epoch-0001" in page
        status, loss = get(base + "/jobs/cat/loss")
        assert status == 200 and json.loads(loss)
        status, data = get(base + "/jobs/cat/download?" + urllib.parse.urlencode({"checkpoint": "epoch-0001",
                                                                                   "format": "kohya"}))
        kohya = storage / "loras" / "team" / "cat" / "local" / "checkpoints" / "epoch-0001"
        assert status == 200 and data == next(kohya.rglob("*.safetensors")).read_bytes()
        status, page = get(base + "/jobs/dog")
        assert status == 404 and b"no run of it under" in page
        request = urllib.request.Request(base + "/jobs/cat/cancel", data=b"{}", method="POST")
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError("local mode accepted an action")
        except urllib.error.HTTPError as err:
            assert err.code == 400 and b"local mode shows runs only" in err.read()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_lora_train_ui_refuses_a_storage_folder_that_does_not_exist(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lora_trainer.cli", "ui", "--storage", str(tmp_path / "nope")],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--storage:" in done.stderr and "is not a folder" in done.stderr

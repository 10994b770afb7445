"""Whole-node multi-GPU on CPU: `lora-train run --processes 2` trains in two gloo processes through accelerate."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import base_spec, job_prefix, manifest, write_job
from lora_operator.api import ExitCode
from lora_trainer.cli import main
from lora_trainer.launch import supervise, wanted_processes, worker_env

pytestmark = pytest.mark.trainer


def test_two_processes_take_the_same_steps_and_write_one_loadable_lora(tmp_path, tiny_models, dataset_dir):
    spec = dict(training={"steps": 4, "epochs": 2}, checkpoints={"formats": ["kohya"]})
    single = base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp_path / "one", **spec)
    assert main(["run", str(write_job(tmp_path / "one.yaml", single))]) == ExitCode.SUCCESS

    double = base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp_path / "two", **spec)
    job = write_job(tmp_path / "two.yaml", double)
    assert main(["run", str(job), "--processes", "2", "--workdir", str(tmp_path / "work")]) == ExitCode.SUCCESS

    progress = json.loads((job_prefix(tmp_path / "two") / "progress.json").read_text())
    assert progress["phase"] == "done" and progress["step"] == progress["totalSteps"] == 4
    entries = manifest(tmp_path / "two")["checkpoints"]
    assert [(e["name"], e["step"]) for e in entries] == [("epoch-0001", 2), ("epoch-0002", 4)]
    # Only rank 0 writes: the second worker's local output folder holds no checkpoint or state.
    assert (tmp_path / "work/rank-0/out/checkpoints").is_dir()
    assert not (tmp_path / "work/rank-1/out/checkpoints").exists()
    assert not (tmp_path / "work/rank-1/out/state").exists()

    path = job_prefix(tmp_path / "two") / "checkpoints/epoch-0002/kohya.safetensors"
    two = load_file(path)
    one = load_file(job_prefix(tmp_path / "one") / "checkpoints/epoch-0002/kohya.safetensors")
    assert two.keys() == one.keys()
    # Rank 1 trained on other micro-batches and DDP averaged its gradients in.
    assert any(not torch.equal(two[k], one[k]) for k in two)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models("sd15"))
    pipe.set_progress_bar_config(disable=True)

    def image():
        return pipe("tkxw, a square", num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    base = image()
    pipe.load_lora_weights(str(path))
    assert np.abs(image() - base).max() > 1e-4


def test_two_processes_share_each_epoch_take_half_the_steps_and_resume_mid_epoch_exactly(
        tmp_path, tiny_models, capfd):
    import re
    import shutil

    from conftest import write_dataset

    data = write_dataset(tmp_path / "four", n=4)
    spec = base_spec("sd15", tiny_models("sd15"), data, tmp_path / "out",
                     training={"steps": "auto", "stepsPreset": "tensorart", "epochs": 2, "batchSize": 1},
                     dataset={"flip": True}, checkpoints={"formats": ["kohya"], "stateEverySteps": 1})
    job = write_job(tmp_path / "job.yaml", spec)
    run = ["run", str(job), "--processes", "2", "--workdir", str(tmp_path / "work"), "--verbose"]
    assert main(run) == ExitCode.SUCCESS

    # 4 images x 1 repeat x 2 epochs / batch 1 = 8 micro-batches: 4 global steps of 2 GPUs, not 8.
    progress = json.loads((job_prefix(tmp_path / "out") / "progress.json").read_text())
    assert progress["step"] == progress["totalSteps"] == 4
    assert progress["plan"] == "4 images x 1 repeats x 2 epochs / batch 1 x 2 GPUs = 4 steps"
    assert [(e["name"], e["step"]) for e in manifest(tmp_path / "out")["checkpoints"]] == [
        ("epoch-0001", 2), ("epoch-0002", 4)]
    drawn = re.findall(r"step (\d+) rank (\d) micro-batch \d+: (\S+)", capfd.readouterr().err)
    per_rank = {rank: [int(s) for s, r, _ in drawn if r == rank] for rank in "01"}
    assert per_rank == {"0": [1, 2, 3, 4], "1": [1, 2, 3, 4]}  # each worker: half of the 8 steps alone
    for epoch_steps in ({1, 2}, {3, 4}):  # each epoch, both workers together: every image once
        assert sorted(key for s, _, key in drawn if int(s) in epoch_steps) == [f"img{i}.png" for i in range(4)]

    # The last state was saved after global step 3, in the middle of epoch 2: resuming from it
    # on two workers again trains step 4 alone, into the same weights.
    state = json.loads((job_prefix(tmp_path / "out") / "state/meta.json").read_text())
    assert state["step"] == 3 and state["epoch"] == 2
    final = job_prefix(tmp_path / "out") / "checkpoints/epoch-0002/kohya.safetensors"
    straight = load_file(shutil.copy(final, tmp_path / "straight.safetensors"))
    final.unlink()
    assert main([*run, "--resume"]) == ExitCode.SUCCESS
    resumed_steps = {int(s) for s, _, _ in re.findall(r"step (\d+) rank (\d) micro-batch \d+: (\S+)",
                                                        capfd.readouterr().err)}
    assert resumed_steps == {4}
    again = load_file(final)
    assert again.keys() == straight.keys() and all(torch.equal(again[k], straight[k]) for k in again)


def test_process_count_and_worker_environment():
    assert wanted_processes(3, {"LORA_PROCESSES": "5"}) == 3
    assert wanted_processes(None, {"LORA_PROCESSES": "5"}) == 5
    env = worker_env({"PATH": "/bin"}, rank=1, world=2, port=1234, cuda=False)
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "ACCELERATE_USE_CPU")} == {
        "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "1234", "ACCELERATE_USE_CPU": "true"}


def test_the_first_failing_worker_sets_the_exit_code_and_the_waiting_ones_are_stopped():
    def worker(code):
        return subprocess.Popen([sys.executable, "-c", code])

    stuck = worker("import time; time.sleep(60)")  # blocked in a collective for the dead rank
    started = time.monotonic()
    assert supervise([stuck, worker("import sys; sys.exit(65)")], grace=0.5) == ExitCode.BAD_DATASET
    assert time.monotonic() - started < 20 and stuck.returncode is not None
    assert supervise([worker("pass"), worker("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")],
                     grace=0.5) == ExitCode.UNEXPECTED
    assert supervise([worker("pass"), worker("pass")]) == ExitCode.SUCCESS

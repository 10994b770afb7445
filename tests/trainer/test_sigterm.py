"""SIGTERM (preemption, eviction, drain): the trainer saves its resume state after the step in flight
and stops, so the next attempt loses no step, whatever checkpoints.stateEverySteps says."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from lora_trainer.stop import Stopped, on_sigterm

pytestmark = pytest.mark.trainer

SPEC = {"training": {"steps": 5, "epochs": 1}, "dataset": {"flip": True},
        "checkpoints": {"formats": ["kohya"], "stateEverySteps": 0}}


def sigterm_during_step(n):
    """after_setup hook: SIGTERM arrives while optimizer step `n` runs (as the kubelet sends it)."""

    def hook(recipe):
        step = recipe.train_step

        def train_step(k):
            if k == n:
                os.kill(os.getpid(), signal.SIGTERM)
            return step(k)

        recipe.train_step = train_step

    return hook


def test_sigterm_mid_interval_saves_the_step_in_flight_and_resumes_to_identical_weights(train, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    straight = train(**SPEC, tmp=tmp_path / "a")
    expected = load_file(tmp_path / "a/work/checkpoints/epoch-0001/kohya.safetensors")

    with pytest.raises(Stopped) as stopped:
        train(**SPEC, tmp=tmp_path / "b", after_setup=sigterm_during_step(3))
    assert stopped.value.step == 3
    # stateEverySteps 0: without the SIGTERM save there would be no state at all in this epoch
    meta = json.loads((tmp_path / "b/out/state/meta.json").read_text())
    assert meta["step"] == 3
    # the save's duration goes out with the progress written on the way out: the operator sets the
    # next pod's grace period from it
    progress = json.loads((tmp_path / "b/out/progress.json").read_text())
    assert progress["step"] == 3 and progress["stateSaveSeconds"] > 0
    assert signal.getsignal(signal.SIGTERM) is before  # the trainer's handler is gone with its loop

    resumed = train(**SPEC, tmp=tmp_path / "b", resume=True)
    assert resumed.start_step == 3  # the step in flight finished and was kept: 0 steps lost
    assert resumed.progress.report.step == straight.progress.report.step == 5
    got = load_file(tmp_path / "b/work/checkpoints/epoch-0001/kohya.safetensors")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_sigterm_before_the_steps_stop_at_once_with_nothing_saved():
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped, on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises as soon as it runs
        pytest.fail("the handler should have stopped the run")
    assert stopped.value.step is None
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_second_sigterm_while_saving_is_ignored():
    with on_sigterm() as request:
        request.deferring = True
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.requested


def test_lora_train_exits_143_on_sigterm_and_resume_finishes_the_run(tmp_path, tiny_models, dataset_dir,
                                                                      monkeypatch, capsys):
    from conftest import base_spec, job_prefix, manifest, write_job
    from lora_trainer.cli import main
    from lora_trainer.loop import LoraRecipe

    spec = base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp_path / "out",
                     training={"steps": 4}, checkpoints={"formats": ["kohya"], "stateEverySteps": 0})
    job = write_job(tmp_path / "job.yaml", spec)
    step = LoraRecipe.train_step

    def train_step(self, k):
        if k == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, k)

    monkeypatch.setattr(LoraRecipe, "train_step", train_step)
    assert main(["run", str(job), "--workdir", str(tmp_path / "w1")]) == 143
    assert "stopped on SIGTERM after step 2" in capsys.readouterr().err
    state = job_prefix(tmp_path / "out") / "state" / "meta.json"
    assert json.loads(state.read_text())["step"] == 2

    monkeypatch.setattr(LoraRecipe, "train_step", step)
    assert main(["run", str(job), "--resume", "--workdir", str(tmp_path / "w2")]) == 0
    done = manifest(tmp_path / "out")
    assert done["finished"] and [c["step"] for c in done["checkpoints"]] == [4]

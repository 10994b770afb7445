"""Resume state every checkpoints.stateEverySteps steps: a crash mid-epoch loses at most that many steps."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.trainer

SPEC = {"training": {"steps": 5, "epochs": 1}, "dataset": {"flip": True}, "network": {"dropout": 0.1},
        "checkpoints": {"formats": ["kohya"]}}


class Crash(Exception):
    pass


def crash_after_step(n):
    """after_setup hook: the run dies right after optimizer step `n` (before anything else saves)."""

    def hook(recipe):
        report = recipe.progress.step

        def step(k, epoch, loss):
            if k == n:
                raise Crash
            report(k, epoch, loss)

        recipe.progress.step = step

    return hook


def test_a_run_crashed_mid_epoch_resumes_from_the_last_step_state_with_identical_weights(train, tmp_path):
    spec = {**SPEC, "checkpoints": {**SPEC["checkpoints"], "stateEverySteps": 2}}
    straight = train(**spec, tmp=tmp_path / "a")
    expected = load_file(tmp_path / "a/work/checkpoints/epoch-0001/kohya.safetensors")

    with pytest.raises(Crash):
        train(**spec, tmp=tmp_path / "b", after_setup=crash_after_step(5))
    meta = json.loads((tmp_path / "b/out/state/meta.json").read_text())
    assert meta["step"] == 4 and meta["epoch"] == 1  # saved at 2 and 4, in the middle of the only epoch

    resumed = train(**spec, tmp=tmp_path / "b", resume=True)
    assert resumed.start_step == 4 and 5 - resumed.start_step <= 2
    assert resumed.progress.report.step == straight.progress.report.step == 5
    got = load_file(tmp_path / "b/work/checkpoints/epoch-0001/kohya.safetensors")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    assert [(c.name, c.step) for c in resumed.manifest.manifest.checkpoints] == [("epoch-0001", 5)]


def test_zero_saves_state_only_at_epoch_ends(train, tmp_path):
    spec = {**SPEC, "checkpoints": {**SPEC["checkpoints"], "stateEverySteps": 0}}
    with pytest.raises(Crash):
        train(**spec, tmp=tmp_path / "c", after_setup=crash_after_step(5))
    assert not (tmp_path / "c/out/state/meta.json").exists()
    assert train(**spec, tmp=tmp_path / "c", resume=True, setup_only=True).start_step == 0

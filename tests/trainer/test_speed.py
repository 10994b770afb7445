"""speed.py's choices: when to compile, in which mode (the GPU measurements behind them are in bench/RESULTS.md)."""

from __future__ import annotations

import pytest
import torch

from lora_trainer.families import get_family
from lora_trainer.speed import COMPILE_MODE_ENV, compile_mode, compile_wanted, upload

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_compile_auto_means_on_a_gpu_and_explicit_settings_win():
    assert compile_wanted("auto", CUDA) and not compile_wanted("auto", CPU)
    assert compile_wanted("on", CPU) and not compile_wanted("off", CUDA)


@pytest.mark.parametrize(("family", "expected"), [("sd15", "reduce-overhead"), ("sdxl", "reduce-overhead"),
                                                  ("flux", None)])
def test_unet_families_replay_cuda_graphs_on_a_gpu(monkeypatch, family, expected):
    monkeypatch.delenv(COMPILE_MODE_ENV, raising=False)
    mode = get_family(family).compile_mode
    assert compile_mode(mode, CUDA, checkpointing=False) == expected
    assert compile_mode(mode, CUDA, checkpointing=True) is None  # graphs were not measured with recomputation
    assert compile_mode(mode, CPU, checkpointing=False) is None


def test_the_environment_overrides_the_mode(monkeypatch):
    monkeypatch.setenv(COMPILE_MODE_ENV, "max-autotune-no-cudagraphs")
    assert compile_mode("reduce-overhead", CPU, checkpointing=True) == "max-autotune-no-cudagraphs"
    monkeypatch.setenv(COMPILE_MODE_ENV, "default")
    assert compile_mode("reduce-overhead", CUDA, checkpointing=False) is None


def test_upload_moves_and_casts_and_keeps_the_dtype_by_default():
    ints = torch.arange(4)
    assert upload(ints, CPU).dtype == torch.int64
    assert upload(ints, CPU, torch.float32).tolist() == [0.0, 1.0, 2.0, 3.0]

"""bench/attention.py's arithmetic on CPU (its timings need a GPU and are in bench/RESULTS.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def attention(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import attention

    return attention


def test_relative_error_is_the_worst_tensor_against_its_own_scale(attention):
    want = [torch.tensor([1.0, -2.0]), torch.tensor([100.0, 0.0])]
    assert attention.relative_error([w.clone() for w in want], want) == 0
    got = [torch.tensor([1.0, -2.5]), torch.tensor([101.0, 0.0])]
    assert attention.relative_error(got, want) == pytest.approx(0.25)  # 0.5 of max 2 beats 1 of max 100


def test_flops_count_two_matmuls_forward_and_two_and_a_half_times_that_backward(attention):
    assert attention.flops(1, 1, 2, 3, 4) == 3.5 * 4 * 2 * 3 * 4
    assert attention.flops(2, 24, 4608, 4608, 128) == 2 * attention.flops(1, 24, 4608, 4608, 128)


def test_without_a_gpu_it_says_so(attention, monkeypatch):
    # CI has no GPU, but a developer's machine may: the stand-in makes this the no-GPU path everywhere
    # (the GPU path itself runs on the device machine; its figures are in bench/RESULTS.md).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a GPU"):
        attention.main([])

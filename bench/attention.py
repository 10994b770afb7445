"""Attention backends at the trainer's shapes: speed of forward + backward, and agreement with fp32.

The denoisers spend a large share of a step in `scaled_dot_product_attention` (Flux at 1024 px:
24 heads x 4608 tokens x 128 per block, 57 blocks). Which backend torch picks decides much of
the step time, and the cuDNN backend has had correctness bugs (bench/RESULTS.md), so each
backend is timed and checked against the math backend in float32 on the same inputs before the
trainer is allowed to use it.

    python bench/attention.py --json bench/results-gpu/attention.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# (case, what, batch, heads, query tokens, key tokens, head dim), bf16 as the trainer runs them.
SHAPES = [
    ("flux-1024", "joint attention, bs1", 1, 24, 4608, 4608, 128),
    ("flux-1024", "joint attention, bs2", 2, 24, 4608, 4608, 128),
    ("sdxl-1024", "self, 64x64 latents, bs4", 4, 10, 4096, 4096, 64),
    ("sdxl-1024", "cross, 64x64 latents, bs4", 4, 10, 4096, 77, 64),
    ("sdxl-1024", "self, 32x32 latents, bs4", 4, 20, 1024, 1024, 64),
    ("sd15-512", "self, 64x64 latents, bs4", 4, 8, 4096, 4096, 40),
    ("sd15-512", "self, 32x32 latents, bs4", 4, 8, 1024, 1024, 80),
]
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION}


def flops(batch: int, heads: int, lq: int, lk: int, dim: int) -> float:
    """Forward (two matmuls) plus backward (2.5x forward) of one attention call."""
    return 3.5 * 4 * batch * heads * lq * lk * dim


def fwd_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    out = F.scaled_dot_product_attention(q, k, v)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return [out, dq, dk, dv]


def relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """Largest of |got - want| / max|want| over the output and the three gradients."""
    pairs = zip(got, want, strict=True)
    return max(float((g.detach().float() - w).abs().max() / w.abs().max().clamp_min(1e-12)) for g, w in pairs)


def time_ms(fn, repeat: int) -> float:
    """Median milliseconds of `fn` with CUDA events, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(shape: tuple, repeat: int) -> list[dict[str, Any]]:
    case, what, batch, heads, lq, lk, dim = shape
    gen = torch.Generator(device="cuda").manual_seed(0)

    def tensor(length: int) -> torch.Tensor:
        return torch.randn(batch, heads, length, dim, device="cuda", generator=gen, dtype=torch.bfloat16)

    q, k, v = (t.requires_grad_() for t in (tensor(lq), tensor(lk), tensor(lk)))
    grad = tensor(lq)
    with sdpa_kernel([SDPBackend.MATH]):
        want = fwd_bwd(*(t.detach().float().requires_grad_() for t in (q, k, v)), grad.float())
    rows = []
    for name, backend in BACKENDS.items():
        row = {"case": case, "what": what, "shape": [batch, heads, lq, lk, dim], "backend": name}
        try:
            with sdpa_kernel([backend]):
                got = fwd_bwd(q, k, v, grad)
                ms = time_ms(lambda: fwd_bwd(q, k, v, grad), repeat)
            row |= {"ms": ms, "tflops": flops(batch, heads, lq, lk, dim) / ms / 1e9,
                    "relative_error": relative_error(got, want),
                    "finite": all(bool(t.isfinite().all()) for t in got)}
        except RuntimeError as err:  # the backend does not take this shape
            row["error"] = str(err).splitlines()[0][:160]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench/attention.py needs a GPU")
    rows = [row for shape in SHAPES for row in measure(shape, args.repeat)]
    print(f"{'case':10} {'what':28} {'backend':9} {'ms':>8} {'TFLOP/s':>8} {'rel err':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:10} {r['what']:28} {r['backend']:9} unsupported: {r['error']}")
        else:
            print(f"{r['case']:10} {r['what']:28} {r['backend']:9} {r['ms']:8.3f} {r['tflops']:8.1f} "
                  f"{r['relative_error']:9.2e}{'' if r['finite'] else '  NOT FINITE'}")
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "cudnn": torch.backends.cudnn.version(), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()

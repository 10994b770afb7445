"""The rows of the trainer benchmark: timing a case's rows step by step, their FLOPs, profile, ratios, table.

`bench/trainer.py` sets a case up (`Bench`: the recipe, the reference loop, the row switch) and runs the
command; this module turns a set-up case into measured rows and prints them. A `bench` here is anything with
`prepare(row)`, `run(row)`, `case`, `batch`, `resolution`, `device` and `recipe` (a `trainer.Bench`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.trainer_measure import Samples, count_flops, timed
from lora_trainer.speed import eager


def measure(bench: Any, rows: list[str], warmup: int, steps: int, peak: float | None) -> list[dict[str, Any]]:
    """Warm up, time `steps` alternating steps per row, then count their FLOPs."""
    for _ in range(warmup):
        for row in rows:
            bench.prepare(row)
            bench.run(row)
    samples = {row: Samples() for row in rows}
    losses: dict[str, list] = {row: [] for row in rows}  # read after the timing: no sync inside a step
    for i in range(steps):
        for row in rows if i % 2 == 0 else rows[::-1]:  # ABBA order: neither row always runs first
            bench.prepare(row)
            seconds, cpu, mib = timed(lambda row=row: losses[row].append(bench.run(row)), bench.device)
            samples[row].times.append(seconds)
            samples[row].cpu_times.append(cpu)
            samples[row].peaks.append(mib)
    flops = {row: flops_of(bench, row) for row in rows}
    checkpointing = bench.recipe.gradient_checkpointing
    out = []
    for row in rows:
        stats = samples[row].summary()
        executed, denoiser_forward = flops[row] or (None, None)
        model_flops = None if executed is None else executed - denoiser_forward if checkpointing else executed
        achieved = None if model_flops is None else model_flops / stats["median_s"]
        out.append({
            "case": f"{bench.case.config or bench.case.family}-{bench.resolution}", "family": bench.case.family,
            "resolution": bench.resolution, "batch": bench.batch, "row": row, **stats,
            "images_per_s": bench.batch / stats["median_s"], "flops": model_flops, "flops_executed": executed,
            "flop_per_s": achieved, "mfu": achieved / peak if peak and achieved else None,
            "gradient_checkpointing": checkpointing, "encoders_per_step": row != "ours",
            "compiled": bench.recipe.compiled and row != "reference",
            "steps": steps, "losses": [float(loss) for loss in losses[row]],
            "losses_finite": all(math.isfinite(float(loss)) for loss in losses[row]),
        })
    return out


def flops_of(bench: Any, row: str) -> tuple[int, int] | None:
    """`count_flops` of one step of `row`; None when the uncompiled counting step runs out of GPU memory.

    Counting runs the step eagerly (compiled kernels bypass the counter), which needs more memory
    than the compiled step: Flux at 1024 px, batch 2 did not fit on an 80 GB H100.
    """
    bench.prepare(row)
    try:
        with eager():  # compiled kernels bypass the FLOP counter; the model FLOPs are the same
            return count_flops(lambda: bench.run(row), bench.recipe.parts.denoiser)
    except torch.OutOfMemoryError:
        print(f"FLOPs of {row}: the uncompiled counting step ran out of GPU memory", flush=True)
        torch.cuda.empty_cache()
        return None


def profile_ours(bench: Any, steps: int = 3, top: int = 20) -> str:
    """torch.profiler over `steps` of our step; the top ops by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    bench.prepare("ours")
    with profile(activities=activities) as prof:
        for _ in range(steps):
            bench.run("ours")
        if bench.device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if bench.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top)


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case and batch: median step time of ours / reference (and ours-uncached / reference)."""
    out = []
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_key.setdefault((r["case"], r["batch"]), {})[r["row"]] = r
    for (case, batch), found in by_key.items():
        if "reference" not in found:
            continue
        entry: dict[str, Any] = {"case": case, "batch": batch}
        for key, suffix in (("median_s", ""), ("cpu_median_s", "_cpu_time")):
            ref = found["reference"][key]
            entry["ours_over_reference" + suffix] = found["ours"][key] / ref
            if "ours-uncached" in found:
                entry["ours_uncached_over_reference" + suffix] = found["ours-uncached"][key] / ref
        out.append(entry)
    return out


def table(rows: list[dict[str, Any]], ratio_rows: list[dict[str, Any]], gpu: bool) -> str:
    """A plain-text table of the rows, then the ratios."""
    head = (f"{'case':<11}{'bs':>3} {'row':<14}{'img/s':>9}{'median ms':>11}{'p90 ms':>9}{'cpu ms':>9}"
            f"{'peak MiB':>10}{'GFLOP/step':>12}{'TFLOP/s' if gpu else 'GFLOP/s':>9}{'MFU':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        rate = f"{r['flop_per_s'] / (1e12 if gpu else 1e9):.2f}" if r["flop_per_s"] else "-"
        gflop = f"{r['flops'] / 1e9:.2f}" if r["flops"] else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(f"{r['case']:<11}{r['batch']:>3} {r['row']:<14}{r['images_per_s']:>9.2f}"
                     f"{1e3 * r['median_s']:>11.1f}{1e3 * r['p90_s']:>9.1f}{1e3 * r['cpu_median_s']:>9.1f}"
                     f"{r['peak_mib']:>10.1f}{gflop:>12}{rate:>9}{mfu:>7}")
    lines.append("")
    for q in ratio_rows:
        line = f"{q['case']} bs{q['batch']}: ours/reference {q['ours_over_reference']:.3f}x wall"
        if not gpu:
            line += f", {q['ours_over_reference_cpu_time']:.3f}x cpu time"
        if "ours_uncached_over_reference" in q:
            line += (f"; at equal work ours-uncached/reference {q['ours_uncached_over_reference']:.3f}x wall"
                     + ("" if gpu else f", {q['ours_uncached_over_reference_cpu_time']:.3f}x cpu time"))
        lines.append(line)
    return "\n".join(lines)

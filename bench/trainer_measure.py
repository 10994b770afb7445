"""What the trainer benchmark measures: step time, peak memory, FLOPs, and the GPU's bf16 peak."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

DENSE_BF16_PEAK = [
    # (substring of the nvidia-smi name, dense bf16 FLOP/s, label); first match wins, so PCIe / NVL come first.
    ("H100 PCIe", 756e12, "H100 PCIe: 756 TFLOP/s dense bf16"),
    ("H100 NVL", 835e12, "H100 NVL: 835 TFLOP/s dense bf16"),
    ("H200", 989e12, "H200: 989 TFLOP/s dense bf16"),
    ("H100", 989e12, "H100 SXM: 989 TFLOP/s dense bf16"),
]


def gpu_name() -> str:
    """The GPU's name as nvidia-smi prints it (torch's name when nvidia-smi is missing)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return torch.cuda.get_device_name()


def dense_bf16_peak(name: str) -> tuple[float | None, str]:
    """(peak FLOP/s, label) of the GPU called `name`; (None, reason) when it is not in the table."""
    for key, peak, label in DENSE_BF16_PEAK:
        if key.lower() in name.lower():
            return peak, label
    return None, f"{name}: no dense bf16 peak known (pass --peak-tflops)"


@dataclass
class Samples:
    """Measured steps of one row."""

    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Median and p90 wall step time (s), median process CPU time (s), max peak memory (MiB)."""
        ordered = sorted(self.times)
        p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
        return {"median_s": statistics.median(ordered), "p90_s": p90,
                "cpu_median_s": statistics.median(self.cpu_times),
                "peak_mib": max(self.peaks) if self.peaks else 0.0}


def _status_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _reset_rss_peak() -> bool:
    # Writing 5 to clear_refs resets VmHWM (the peak RSS) of this process (Linux >= 4.0).
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float, float]:
    """Run `fn` once; (wall seconds, process CPU seconds, peak memory MiB).

    GPU: synchronized wall time and torch.cuda.max_memory_allocated (absolute). CPU: wall
    time and the rise of the peak RSS over the RSS before the step. The CPU time is what
    a shared, loaded machine cannot inflate by descheduling us (with one torch thread it
    is the step's own work).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        torch.cuda.synchronize(device)
        return (time.perf_counter() - start, time.process_time() - cpu,
                torch.cuda.max_memory_allocated(device) / 2**20)
    before = _status_kib("VmRSS")
    reset = _reset_rss_peak()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = _status_kib("VmHWM") if reset else _status_kib("VmRSS")
    return elapsed, cpu, max(0, after - before) / 1024


def count_flops(fn: Callable[[], object], denoiser: torch.nn.Module) -> tuple[int, int]:
    """FLOPs of one call of `fn`, and of the denoiser's forward passes within it.

    The second number lets a caller drop the forward that gradient checkpointing
    recomputes in the backward pass (model FLOPs, not hardware FLOPs).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    forward = {"start": 0, "total": 0}

    def pre(*_):
        forward["start"] = counter.get_total_flops()

    def post(*_):
        forward["total"] += counter.get_total_flops() - forward["start"]

    handles = [denoiser.register_forward_pre_hook(pre), denoiser.register_forward_hook(post)]
    try:
        with counter:
            fn()
    finally:
        for handle in handles:
            handle.remove()
    return counter.get_total_flops(), forward["total"]

"""`make bench-gpu` (issue 21): every speed case on one GPU within one time budget, one process per case.

The cases run in `SUITE` order, most wanted first: SDXL 1024 batch 4 and its A/B variants (the
trainer's defaults against the old behaviour, one switch each: `LORA_ADAPTER_CAST=op`, only the
transformer blocks compiled), Flux.1 1024 batch 1 and its variant without CUDA graphs, the newer
families at 1024 batch 1 (z-image, qwen-image, flux2-klein), SD1.5 512 batch 4,
time-to-LoRA warm and cold (`bench/time_to_lora.py`), the quantized bases (torchao fp8) and Chroma.
Each case runs `bench/trainer.py` (or time_to_lora.py) in a subprocess of its own with a time limit: a
slow case is killed at its limit and recorded, not allowed to eat the rest. When less time is left
than a case's nominal time, it runs fewer steps; when less than its minimum, it is not started (recorded
as skipped, for the rerun: ``--only NAME,...``). Variants time our row only and take the reference
from their baseline case of the same run (the same model, data and settings but the environment).

Per case it writes ``<results>/<date>-<case>.json``: the command and environment, status, the rows of
bench/trainer.py, and a summary (img/s, MFU, peak memory from torch.cuda.max_memory_allocated, ratio to
the diffusers-example reference, ratio to the published single-H100 figure in `PUBLISHED`). At the end it
prints the markdown tables of `bench.gpu_table` (the same as ``python -m bench.gpu_table FILES``).

    python bench/gpu_suite.py --budget-s 520                      # one H100, 10-minute command
    python bench/gpu_suite.py --only flux2-klein-1024-bs1-fp8,time-to-lora-cold   # the rerun
    python bench/gpu_suite.py --tiny --device cpu --budget-s 60 --results /tmp/r   # CPU, tiny models
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(ROOT))

from bench.gpu_table import markdown, summarize  # noqa: E402

TRANSFORMER_BLOCKS = "BasicTransformerBlock"
"""LORA_COMPILE_BLOCKS of the SDXL variant: the transformer blocks only, without the ResNet blocks that
the UNet families compile by default."""


@dataclass(frozen=True)
class SuiteCase:
    """One row of the suite: a bench/trainer.py case (or time-to-LoRA) with its settings."""

    name: str
    case: str
    """A key of bench/trainer.py CASES, or ``time-to-lora``."""
    batch: int = 1
    env: tuple[tuple[str, str], ...] = ()
    """Environment overrides of this case (the trainer's expert switches)."""
    baseline: str | None = None
    """The suite case whose reference row this one's ratio uses (a variant times ours only)."""
    quantization: str = "none"
    nominal_s: float = 60.0
    """Seconds on one H100 with the full steps, set-up and compilation included (estimated from session 6)."""
    min_s: float = 30.0
    """Not started with less time than this left."""
    needs_gib: float | None = None
    """GPU memory the case needs by bench/RESULTS.md's estimate, where it exceeds an 80 GB H100's."""
    cache: str = "warm"
    """time-to-LoRA only: the node cache's state."""


SUITE = [
    SuiteCase("sdxl-1024-bs4", "sdxl-1024", 4, nominal_s=110, min_s=70),
    SuiteCase("sdxl-1024-bs4-cast-op", "sdxl-1024", 4, (("LORA_ADAPTER_CAST", "op"),), "sdxl-1024-bs4",
              nominal_s=90, min_s=60),
    SuiteCase("sdxl-1024-bs4-transformer-blocks", "sdxl-1024", 4, (("LORA_COMPILE_BLOCKS", TRANSFORMER_BLOCKS),),
              "sdxl-1024-bs4", nominal_s=90, min_s=60),
    SuiteCase("flux-1024-bs1", "flux-1024", 1, nominal_s=100, min_s=60),
    SuiteCase("flux-1024-bs1-no-graphs", "flux-1024", 1, (("LORA_COMPILE_MODE", "default"),),
              "flux-1024-bs1", nominal_s=90, min_s=60),
    SuiteCase("z-image-1024-bs1", "z-image-1024", 1, nominal_s=70, min_s=45),
    SuiteCase("qwen-image-1024-bs1", "qwen-image-1024", 1, nominal_s=100, min_s=60),
    SuiteCase("flux2-klein-1024-bs1", "flux2-klein-1024", 1, nominal_s=60, min_s=40),
    SuiteCase("sd15-512-bs4", "sd15-512", 4, nominal_s=50, min_s=30),
    SuiteCase("time-to-lora-warm", "time-to-lora", nominal_s=240, min_s=150, cache="warm"),
    SuiteCase("time-to-lora-cold", "time-to-lora", nominal_s=150, min_s=100, cache="cold"),
    SuiteCase("flux2-klein-1024-bs1-fp8", "flux2-klein-1024", 1, quantization="fp8", nominal_s=70, min_s=45),
    SuiteCase("chroma-1024-bs1", "chroma-1024", 1, nominal_s=80, min_s=50),
    # Flux.2 dev: 32B transformer in fp8 + Mistral Small 24B. bench/RESULTS.md's memory table: 75.6 GiB with
    # checkpointing and parked text encoders, over the 67 GiB usable of an 80 GB H100: an H200 case.
    SuiteCase("flux2-1024-bs1-fp8", "flux2-1024", 1, quantization="fp8", nominal_s=150, min_s=100,
              needs_gib=75.6),
]
BY_NAME = {c.name: c for c in SUITE}
STEPS = {"full": (2, 6), "short": (1, 3)}
"""(warm-up, timed) steps per row: full, and when the time left is under the case's nominal time."""
TTL_STEPS = {"full": 100, "short": 40, "tiny": 4}
"""time-to-LoRA optimizer steps (the job's shape is kept; the 1000-step total is projected)."""


def command(case: SuiteCase, args: argparse.Namespace, short: bool, out: Path, budget: float) -> list[str]:
    """The child process's command line (run in the repository root)."""
    if case.case == "time-to-lora":
        steps = TTL_STEPS["tiny" if args.tiny else "short" if short else "full"]
        cmd = [sys.executable, "bench/time_to_lora.py", "--cache", case.cache, "--steps", str(steps),
               "--device", args.device, "--model-dir", str(args.work / "flux-model"), "--json", str(out),
               "--timeout-s", str(max(budget - 15, 10))]
        return cmd + (["--tiny"] if args.tiny else [])
    warmup, steps = STEPS["short" if short else "full"]
    cmd = [sys.executable, "bench/trainer.py", "--device", args.device, "--case", case.case,
           "--batch", str(case.batch), "--warmup", str(warmup), "--steps", str(steps), "--no-equal-work",
           "--base-quantization", case.quantization, "--json", str(out)]
    return cmd + (["--tiny"] if args.tiny else []) + (["--no-reference"] if case.baseline else [])


def gpu_gib(device: str) -> float | None:
    """Total memory of GPU 0 in GiB (None on CPU)."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 2**30


def run_limited(cmd: list[str], env: dict[str, str], limit: float) -> tuple[str, str]:
    """Run `cmd` in the repository root for at most `limit` seconds; (status, its output).

    The child gets a process group of its own, and at the limit the whole group is killed: time_to_lora.py's
    trainer (and MinIO) would otherwise live on, holding GPU memory the next case needs.
    """
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timeout after {limit:.0f} s"
        log.seek(0)
        return status, log.read()


def run_case(case: SuiteCase, args: argparse.Namespace, left: float, memory: float | None) -> dict[str, Any]:
    """Run one case within the time left; its record (rows and summary filled in by the caller)."""
    record: dict[str, Any] = {"suite_case": case.name, "case": case.case, "batch": case.batch,
                              "env": dict(case.env), "baseline": case.baseline, "base_quantization": case.quantization}
    if memory is not None and case.needs_gib and case.needs_gib > 0.9 * memory:
        return {**record, "status": "skipped", "reason": f"needs ~{case.needs_gib} GiB (estimate), "
                f"over 90% of this GPU's {memory:.0f} GiB: run it on nvidia-h200"}
    nominal, minimum = (args.tiny_case_s, args.tiny_case_s / 2) if args.tiny else (case.nominal_s, case.min_s)
    if left < minimum:
        return {**record, "status": "skipped", "reason": f"{left:.0f} s left of the budget, needs {minimum:.0f} s"}
    short = left < 1.2 * nominal
    budget = min(left, 1.6 * nominal)
    out = args.work / f"{case.name}.json"
    cmd = command(case, args, short, out, budget)
    env = {**os.environ, **dict(case.env), "PYTHONUNBUFFERED": "1"}
    print(f"\n=== {case.name}: {' '.join(f'{k}={v}' for k, v in case.env)} {' '.join(cmd[1:])} "
          f"(limit {budget:.0f} s{', fewer steps' if short else ''})", flush=True)
    started = time.monotonic()
    status, output = run_limited(cmd, env, budget)
    seconds = time.monotonic() - started
    print(output[-3000:] if status != "ok" else output[-1500:], flush=True)
    record.update({"status": status, "seconds": round(seconds, 1), "limit_s": round(budget, 1), "short": short,
                   "command": " ".join([*(f"{k}={v}" for k, v in case.env), *cmd[1:]])})
    if out.exists():
        record["result"] = json.loads(out.read_text())
    if status != "ok":
        record["log_tail"] = "\n".join(output.splitlines()[-25:])
    return record


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the suite; write a JSON per case; print the tables; returns the records."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny test models at 32 px (the CPU dry run)")
    parser.add_argument("--budget-s", type=float, default=520,
                        help="seconds for all cases together (default 520: a 10-minute device command with its set-up)")
    parser.add_argument("--tiny-case-s", type=float, default=60, help="--tiny: each case's nominal seconds")
    parser.add_argument("--only", help="comma-separated suite case names (default: all, in order)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results-gpu", help="where the JSONs go")
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="the JSON names' date prefix")
    args = parser.parse_args(argv)
    unknown = [n for n in (args.only or "").split(",") if n and n not in BY_NAME]
    if unknown:
        raise SystemExit(f"--only: unknown case(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    cases = [BY_NAME[n] for n in args.only.split(",")] if args.only else SUITE
    started, memory = time.monotonic(), gpu_gib(args.device)
    args.results.mkdir(parents=True, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory(prefix="lora-gpu-suite-") as work:
        args.work = Path(work)
        for case in cases:
            record = run_case(case, args, args.budget_s - (time.monotonic() - started), memory)
            baseline = _baseline(case, records, args)
            record["summary"] = summarize(record, baseline)
            record["date"] = args.date
            (args.results / f"{args.date}-{case.name}.json").write_text(json.dumps(record, indent=1) + "\n")
            records.append(record)
    print(f"\nsuite: {time.monotonic() - started:.0f} s of the {args.budget_s:.0f} s budget\n", flush=True)
    print(markdown(records), flush=True)
    return records


def _baseline(case: SuiteCase, records: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any] | None:
    """The baseline case's record: from this run, else its JSON of the same date (a rerun with --only)."""
    if case.baseline is None:
        return None
    for record in records:
        if record["suite_case"] == case.baseline:
            return record
    path = args.results / f"{args.date}-{case.baseline}.json"
    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    main()

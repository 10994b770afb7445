"""The GPU suite's JSONs as markdown tables, ready for bench/RESULTS.md and the README's speed table.

    python -m bench.gpu_table bench/results-gpu/2026-12-07-*.json

`summarize` turns one case's record (`bench.gpu_suite`) into its summary: images/s, step time, MFU,
peak memory, the ratio to the diffusers-example reference (the case's own reference row, or its
baseline's for a variant) and to the published single-H100 figure (`PUBLISHED`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.time_to_lora import PHASES as TTL_PHASES

PUBLISHED = {
    "z-image": (0.243, "Z-Image Turbo"),
    "qwen-image": (1.20, "Qwen-Image"),
    "chroma": (0.454, "Chroma"),
}
"""Seconds per step of the best published single-H100 LoRA figures, batch 1, by family. Source: SimpleTuner's
published per-model training speeds as issue 21 quotes them (SimpleTuner, one H100, batch 1). The ratio
`x published` = their s/step / ours, so above 1 is faster; equal settings means batch 1 at 1024 px, rank 16."""
def _row(record: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    rows = ((record or {}).get("result") or {}).get("rows") or []
    return next((r for r in rows if r["row"] == name), None)


def summarize(record: dict[str, Any], baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """The figures of one case's record; {} when it did not run to the end."""
    result = record.get("result")
    if record.get("status") != "ok" or not result:
        return {}
    if record["case"] == "time-to-lora":
        run = result["runs"].get(next(iter(result["runs"])), {})
        return {"cache": next(iter(result["runs"])), "status": run.get("status"), "wall_s": run.get("wall_s"),
                "projected_total_s": run.get("projected_total_s"), "steps": result["steps"],
                "target_steps": result["target_steps"], "breakdown": run.get("breakdown"),
                "storage": result["storage"]}
    ours = _row(record, "ours")
    reference = _row(record, "reference") or _row(baseline, "reference")
    family = ours["family"]
    summary = {
        "device": result["device"], "family": family, "img_per_s": round(ours["images_per_s"], 3),
        "ms_per_step": round(1e3 * ours["median_s"], 1), "p90_ms": round(1e3 * ours["p90_s"], 1),
        "mfu": ours["mfu"], "peak_gib": round(ours["peak_mib"] / 1024, 2), "losses_finite": ours["losses_finite"],
        "gradient_checkpointing": ours["gradient_checkpointing"],
        "reference_img_per_s": round(reference["images_per_s"], 3) if reference else None,
        "reference_from": None if _row(record, "reference") or not reference else baseline["suite_case"],
        "x_reference": round(ours["images_per_s"] / reference["images_per_s"], 3) if reference else None,
    }
    if family in PUBLISHED and record["batch"] == 1:
        seconds, model = PUBLISHED[family]
        summary.update(published_s_per_step=seconds, published_model=model,
                       x_published=round(seconds / ours["median_s"], 3))
    return summary


def _settings(record: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in record.get("env", {}).items()]
    if record.get("base_quantization", "none") != "none":
        parts.append(f"base {record['base_quantization']}")
    return ", ".join(parts) or "default"


def _num(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def markdown(records: list[dict[str, Any]]) -> str:
    """The speed table, then the time-to-LoRA breakdown (when the suite ran it)."""
    speed = [r for r in records if r["case"] != "time-to-lora"]
    devices = sorted({r["summary"]["device"] for r in speed if r.get("summary")})
    lines = [f"Device: {', '.join(devices) or 'none ran'}; date {records[0].get('date', '?') if records else '?'}.",
             "",
             "| case | settings | bs | img/s | ms/step (p90) | MFU | peak GiB | reference img/s | x reference "
             "| published s/step | x published | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in speed:
        s = r.get("summary") or {}
        ref = _num(s.get("reference_img_per_s"), ".2f") + (f" (of {s['reference_from']})" if s.get("reference_from")
                                                           else "")
        mfu = _num(None if s.get("mfu") is None else 100 * s["mfu"], ".1f", "%")
        step = f"{s['ms_per_step']:.1f} ({s['p90_ms']:.1f})" if s else "-"
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', 'see log_tail')}"
        lines.append(f"| {r['case']} | {_settings(r)} | {r['batch']} | {_num(s.get('img_per_s'), '.2f')} | {step} "
                     f"| {mfu} | {_num(s.get('peak_gib'), '.1f')} | {ref} | {_num(s.get('x_reference'), '.2f', 'x')} "
                     f"| {_num(s.get('published_s_per_step'), '.3f')} | {_num(s.get('x_published'), '.2f', 'x')} "
                     f"| {status} |")
    ttl = [r for r in records if r["case"] == "time-to-lora"]
    if ttl:
        lines += ["", "| time-to-LoRA phase | " + " | ".join(f"{r['suite_case']}, s" for r in ttl) + " |",
                  "|---|" + "---|" * len(ttl)]
        sums = [r.get("summary") or {} for r in ttl]
        for phase in TTL_PHASES:
            lines.append(f"| {phase} | " + " | ".join(_num((s.get("breakdown") or {}).get(phase), ".1f")
                                                      for s in sums) + " |")
        lines.append("| **total (measured)** | " + " | ".join(_num(s.get("wall_s"), ".1f") for s in sums) + " |")
        lines.append("| total projected to 1000 steps | "
                     + " | ".join(_num(s.get("projected_total_s"), ".1f") for s in sums) + " |")
        lines.append("| steps run | " + " | ".join(str(s.get("steps", "-")) for s in sums) + " |")
        lines.append("| status | " + " | ".join(r["status"] if r["status"] != "skipped" else
                                                f"skipped: {r['reason']}" for r in ttl) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Print the tables of the JSON files named (in the order given)."""
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    table = markdown([json.loads(p.read_text()) for p in paths])
    print(table)
    return table


if __name__ == "__main__":
    main()

"""bench/memory.py --options: the estimate table reads the family table."""

from __future__ import annotations

from pathlib import Path

from lora_operator.api.families import FAMILIES

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_has_a_row_per_family_and_flux_matches_its_measurement(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.memory import table

    rows = table(1, [24.0])
    assert all(f"| {name} | " in rows for name in FAMILIES)
    assert "| flux | 1024 | 31.4 | 60.8 " in rows  # measured: 60.4 GiB on an H100 (bench/RESULTS.md, session 6)
    assert "19.0 (fits 24) |" in rows.split("| flux |")[1].splitlines()[0]  # nf4 + checkpointing


def test_flux2_dev_fits_80gb_with_fp8_and_offload_and_not_with_fp8_alone(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.memory import table

    head, _, *rows = table(1, [80.0]).splitlines()
    columns = [c.strip() for c in head.strip("|").split("|")]
    flux2 = [c.strip() for c in next(r for r in rows if r.startswith("| flux2 |")).strip("|").split("|")]
    cell = dict(zip(columns, flux2, strict=True))
    assert cell["fp8 +ckpt +park +offload"].endswith("(fits 80)")  # examples/flux2-dev-80gb-job.yaml
    assert "fits" not in cell["fp8 +ckpt +park"]
    assert float(cell["fp8 +ckpt +park +offload"].split()[0]) < float(cell["fp8 +ckpt +park"].split()[0])

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

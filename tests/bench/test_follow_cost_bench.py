"""bench/follow_cost.py at a tiny size, against a real MinIO: every running job is followed once an
interval, two at a time, reading progress.json only, and its JSON carries the figures RESULTS quotes."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_follow_reads_each_jobs_progress_once_an_interval(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.follow_cost import main

    out = tmp_path / "result.json"
    main(["--jobs", "8", "--interval", "0.8", "--intervals", "2", "--direct-rounds", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    loop = result["loop"]
    assert 12 <= loop["reconciles"] <= 20  # 8 jobs, 2 intervals
    assert loop["reads_per_reconcile"] == {"progress.json": 1.0}  # the manifest was read before, unchanged since
    assert loop["most_in_flight"] <= 2 and loop["cpu_ms_per_reconcile"] > 0
    assert loop["event_reconcile_ms"]["n"] > 0 and len(result["direct_cpu_ms_per_job"]) == 1
    assert result["command"].startswith("python -m bench.follow_cost --jobs 8")

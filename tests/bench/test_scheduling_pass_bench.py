"""bench/scheduling_pass.py at a tiny size: the drain it plays admits as many jobs as ended, every
node stays busy, the options take effect, and its JSON carries the figures RESULTS quotes."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_drain_admits_one_job_per_freed_node_and_reports_each_cost(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.scheduling_pass import main

    out = tmp_path / "result.json"
    main(["--jobs", "120", "--nodes", "12", "--free", "2", "--steps", "6", "--estimate-every", "3",
          "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["nodes"] == 12 and result["running_at_end"] == 12
    assert result["admitted"] == 2 * 6  # each freed node went to a waiting job at the next pass
    assert result["queued_at_end"] == 120 - 12 - 2 * 6
    assert result["pass"]["n"] == 6
    assert result["position_round"]["n"] == 4 and result["position_round_with_estimate"]["n"] == 2
    assert result["pass"]["median_ms"] > 0
    assert result["command"].startswith("python -m bench.scheduling_pass --jobs 120")


def test_a_namespace_limit_holds_back_admissions_and_the_profile_lists_the_pass(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.scheduling_pass import main

    main(["--jobs", "60", "--nodes", "12", "--free", "3", "--steps", "2", "--limits", '{"*": 1}', "--profile"])
    printed = capsys.readouterr().out
    result = json.loads(printed[:printed.index("\n}\n") + 2])
    assert result["running_at_end"] <= 10  # ten namespaces, one node each at most: two of 12 nodes stay free
    assert "controller.py" in printed and "(run_pass)" in printed


def test_with_positions_written_a_round_where_nothing_moved_writes_no_position(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.scheduling_pass import main

    writes = {}
    for flag in ([], ["--positions-written"]):
        out = tmp_path / f"{len(flag)}.json"
        main(["--jobs", "80", "--nodes", "10", "--free", "0", "--steps", "2", "--estimate-every", "100",
              "--out", str(out), *flag])
        writes[bool(flag)] = json.loads(out.read_text())["position_writes"]
    assert writes[False] == 50  # every waiting job is due: the writer's burst, all spent on positions
    assert writes[True] == 0  # only estimates are written (the first round plays the queue forward)

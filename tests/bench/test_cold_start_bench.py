"""The cold/warm start benchmark runs: the cold run fetches the model, the warm one finds it in the
cache and transfers nothing (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer


def test_cold_then_warm_reports_a_miss_then_a_hit(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # bench/: a package, not installed
    from bench import cold_start

    out = tmp_path / "cold-start.json"
    assert cold_start.main(["--family", "sd15", "--runs", "1", "--json", str(out)]) == 0
    cold, warm = json.loads(out.read_text())
    assert (cold["cache"], warm["cache"]) == ("cold", "warm")
    assert cold["models"][0]["hit"] is False and cold["models"][0]["bytes"] > 0
    assert warm["models"][0]["hit"] is True and warm["models"][0]["bytes"] == 0
    assert cold["seconds_to_first_step"] > 0 and warm["seconds_to_first_step"] > 0

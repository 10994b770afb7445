"""`make bench-gpu`'s suite on CPU with the tiny models: a JSON per case, variants against their baseline's
reference, published-figure ratios, a budget that skips, and the markdown table (no timing asserted)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

ROOT = Path(__file__).resolve().parents[2]
CASES = ["sdxl-1024-bs4", "sdxl-1024-bs4-cast-op", "z-image-1024-bs1"]


@pytest.fixture
def suite(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # bench/: a package at the repository root, not installed
    from bench import gpu_suite

    return gpu_suite


def test_tiny_suite_writes_a_json_per_case_and_one_table(suite, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU run needs a process without a GPU; on a GPU run make bench-gpu")
    records = suite.main(["--tiny", "--device", "cpu", "--budget-s", "600", "--only", ",".join(CASES),
                          "--results", str(tmp_path), "--date", "2000-01-01"])
    files = sorted(tmp_path.glob("2000-01-01-*.json"))
    assert [f.name for f in files] == sorted(f"2000-01-01-{name}.json" for name in CASES)
    by_name = {r["suite_case"]: r for r in (json.loads(f.read_text()) for f in files)}
    assert [r["suite_case"] for r in records] == CASES
    for record in by_name.values():
        assert record["status"] == "ok", record.get("log_tail")
        summary = record["summary"]
        assert summary["img_per_s"] > 0 and summary["ms_per_step"] > 0 and summary["losses_finite"]
        assert summary["mfu"] is None  # CPU: no bf16 peak
    base, variant, zimage = by_name["sdxl-1024-bs4"], by_name["sdxl-1024-bs4-cast-op"], by_name["z-image-1024-bs1"]
    # the baseline times the diffusers-example reference; the variant only ours, under its environment
    assert {r["row"] for r in base["result"]["rows"]} == {"ours", "reference"}
    assert {r["row"] for r in variant["result"]["rows"]} == {"ours"}
    assert variant["env"] == {"LORA_ADAPTER_CAST": "op"} and variant["command"].startswith("LORA_ADAPTER_CAST=op ")
    assert variant["summary"]["reference_from"] == "sdxl-1024-bs4"
    assert variant["summary"]["reference_img_per_s"] == base["summary"]["reference_img_per_s"]
    assert variant["summary"]["x_reference"] == pytest.approx(
        variant["summary"]["img_per_s"] / base["summary"]["reference_img_per_s"], rel=1e-2)
    # z-image has no example loop here: ours alone, against SimpleTuner's published s/step
    assert zimage["summary"]["x_reference"] is None
    assert zimage["summary"]["published_s_per_step"] == 0.243
    assert zimage["summary"]["x_published"] == pytest.approx(0.243 / (zimage["summary"]["ms_per_step"] / 1e3),
                                                              rel=1e-2)
    # the printed table is the helper's table of the JSONs, one row per case
    from bench import gpu_table

    printed = capsys.readouterr().out
    table = gpu_table.main([str(tmp_path / f"2000-01-01-{name}.json") for name in CASES])
    assert table in printed
    rows = [line for line in table.splitlines() if line.startswith("| sdxl-1024 |") or line.startswith("| z-image")]
    assert len(rows) == 3 and "LORA_ADAPTER_CAST=op" in rows[1] and "0.243" in rows[2]


def test_a_case_is_skipped_when_too_little_budget_is_left_or_the_gpu_is_too_small(suite, tmp_path):
    args = argparse.Namespace(tiny=False, device="cuda", work=tmp_path, tiny_case_s=60)
    short = suite.run_case(suite.BY_NAME["flux-1024-bs1"], args, left=10, memory=79.1)
    assert short["status"] == "skipped" and "10 s left" in short["reason"]
    small = suite.run_case(suite.BY_NAME["flux2-1024-bs1-fp8"], args, left=500, memory=79.1)
    assert small["status"] == "skipped" and "nvidia-h200" in small["reason"]
    assert suite.summarize(small) == {}


def test_every_case_names_a_bench_case_and_variants_follow_their_baseline(suite):
    from bench.trainer import CASES as BENCH_CASES

    names = [c.name for c in suite.SUITE]
    assert len(names) == len(set(names))
    for i, case in enumerate(suite.SUITE):
        assert case.case in BENCH_CASES or case.case == "time-to-lora"
        if case.baseline:
            assert case.baseline in names[:i] and suite.BY_NAME[case.baseline].case == case.case


def test_short_budget_runs_fewer_steps(suite, tmp_path):
    args = argparse.Namespace(tiny=False, device="cuda", work=tmp_path)
    full = suite.command(suite.BY_NAME["sdxl-1024-bs4"], args, False, tmp_path / "x.json", 100)
    short = suite.command(suite.BY_NAME["sdxl-1024-bs4"], args, True, tmp_path / "x.json", 100)
    steps = lambda cmd: int(cmd[cmd.index("--steps") + 1])  # noqa: E731
    assert steps(short) < steps(full)


def test_a_case_over_its_limit_is_killed_with_the_processes_it_started(suite, tmp_path):
    import os
    import sys
    import time

    pid_file = tmp_path / "grandchild.pid"
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(60)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); "
              f"time.sleep(60)")
    status, output = suite.run_limited([sys.executable, "-c", script], dict(os.environ), limit=5)
    assert status == "timeout after 5 s" and "started" in output
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the kill is delivered at once; its reaping by init may lag
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{grandchild}/stat") as stat:
            if stat.read().split()[2] == "Z":  # a zombie waiting for init: already dead
                break
        time.sleep(0.1)
    else:
        raise AssertionError("the case's own child outlived the limit")

"""bench/operator_scale.py --kwok-nice: every thread of the process gets the nice level, and threads made later
inherit it (Linux's nice is per thread)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

THREADS = """
import threading, time, sys
for _ in range(3):
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
sys.stdout.write("more\\n"); sys.stdout.flush()
time.sleep(60)
"""


def nice_levels(pid: int) -> list[int]:
    # /proc/PID/task/TID/stat: the 19th field is nice; the command name (field 2) is in parentheses
    return [int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
            for task in Path(f"/proc/{pid}/task").iterdir()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="per-thread nice is read from Linux's /proc")
def test_renice_sets_every_thread_and_threads_made_later_inherit_it(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    from operator_scale import renice

    child = subprocess.Popen([sys.executable, "-c", THREADS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        ours = os.getpriority(os.PRIO_PROCESS, 0)  # a child starts at its parent's; raising it needs no privilege
        assert set(nice_levels(child.pid)) == {ours}
        nice = min(ours + 7, 19)
        assert renice(child.pid, nice) == 4
        assert nice_levels(child.pid) == [nice] * 4
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "more\n"
        deadline = time.monotonic() + 10
        while len(nice_levels(child.pid)) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert nice_levels(child.pid) == [nice] * 5
    finally:
        child.kill()
        child.wait()

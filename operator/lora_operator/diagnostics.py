"""Memory diagnostics for benchmarks (opt-in with LORA_TRACEMALLOC=DIR; off in production)."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _malloc_totals() -> str:
    """glibc's mallinfo2: bytes the heap holds, in use, and free but kept (diagnostics)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return "mallinfo2 unavailable"
    mb = 2**20
    return (f"malloc main arena+others {info.arena / mb:.1f} MB, in use {info.uordblks / mb:.1f} MB, "
            f"free in heap {info.fordblks / mb:.1f} MB, mmapped {info.hblkhd / mb:.1f} MB")


def start_tracemalloc(out_dir: str) -> None:
    """LORA_TRACEMALLOC=DIR (diagnostics, bench only): the first SIGUSR1 starts tracing Python
    allocations (LORA_TRACEMALLOC_FRAMES deep; tracing the start-up imports is very slow), each
    later SIGUSR1 writes DIR/tracemalloc-N.txt: RSS, glibc malloc totals (in use / free in the
    heap), traced bytes, the top allocation sites and the growth since the first dump. After
    the start a dump is also written every LORA_TRACEMALLOC_SECONDS (default 15)."""
    import signal
    import threading
    import tracemalloc
    from pathlib import Path

    malloc_totals, rss_mb = _malloc_totals, _rss_mb

    frames = int(os.environ.get("LORA_TRACEMALLOC_FRAMES", "10"))
    every = float(os.environ.get("LORA_TRACEMALLOC_SECONDS", "15"))
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"n": 0, "first": None}
    lock = threading.Lock()

    def dump() -> None:
        with lock:
            if not tracemalloc.is_tracing():
                tracemalloc.start(frames)
                threading.Thread(target=periodic, name="tracemalloc", daemon=True).start()
                (directory / "started.txt").write_text(f"rss {rss_mb():.1f} MB; {malloc_totals()}\n")
                return
            snap = tracemalloc.take_snapshot().filter_traces(
                (tracemalloc.Filter(False, tracemalloc.__file__),))
            current, peak = tracemalloc.get_traced_memory()
            state["n"] += 1
            lines = [f"dump {state['n']} rss {rss_mb():.1f} MB traced {current / 2**20:.1f} MB "
                     f"peak {peak / 2**20:.1f} MB threads {threading.active_count()}", malloc_totals()]
            lines.append("== top by lineno ==")
            lines.extend(str(stat) for stat in snap.statistics("lineno")[:25])
            if state["first"] is not None:
                lines.append("== growth since dump 1 by traceback ==")
                for stat in snap.compare_to(state["first"], "traceback")[:10]:
                    lines.append(f"{stat.size_diff / 2**20:+.1f} MB {stat.count_diff:+d} blocks")
                    lines.extend("    " + line for line in stat.traceback.format())
            else:
                state["first"] = snap
            (directory / f"tracemalloc-{state['n']:03d}.txt").write_text("\n".join(lines) + "\n")

    def periodic() -> None:
        while True:
            threading.Event().wait(every)
            try:
                dump()
            except Exception:  # noqa: BLE001 - diagnostics only
                log.exception("tracemalloc dump failed")

    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=dump, daemon=True).start())
    (directory / "malloc-at-start.txt").write_text(f"rss {rss_mb():.1f} MB; {malloc_totals()}\n")

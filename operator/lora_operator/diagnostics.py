"""Memory diagnostics for benchmarks (opt-in with LORA_TRACEMALLOC=DIR; off in production)."""

from __future__ import annotations

import logging
import os
import sys
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


def start_tracemalloc(out_dir: str, frames: int = 10, every: float = 15.0) -> None:
    """LORA_TRACEMALLOC=DIR (diagnostics, bench only): the first SIGUSR1 starts tracing Python
    allocations (`frames` deep, LORA_TRACEMALLOC_FRAMES; tracing the start-up imports is very
    slow), each later SIGUSR1 writes DIR/tracemalloc-N.txt: RSS, glibc malloc totals (in use /
    free in the heap), traced bytes, the top allocation sites and the growth since the first
    dump. After the start a dump is also written every `every` seconds (LORA_TRACEMALLOC_SECONDS)."""
    import signal
    import threading
    import tracemalloc
    from pathlib import Path

    malloc_totals, rss_mb = _malloc_totals, _rss_mb

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
    counter = iter(range(1, 10**6))
    signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(
        target=census, args=(str(directory / f"census-{next(counter):03d}.txt"),), daemon=True).start())
    (directory / "malloc-at-start.txt").write_text(f"rss {rss_mb():.1f} MB; {malloc_totals()}\n")


def census(path: str) -> None:
    """Writes what holds the job bodies alive (diagnostics, bench only; SIGUSR2 with
    LORA_TRACEMALLOC): objects by type, how many full job metadata dicts (with managedFields)
    and parsed resolved specs exist, and for a sample of them the chain of referrers."""
    import gc
    from collections import Counter

    gc.collect()
    objects = gc.get_objects()
    types = Counter(type(o).__name__ for o in objects)
    full_meta = [o for o in objects if isinstance(o, dict) and "managedFields" in o and "uid" in o]
    resolved = [o for o in objects if isinstance(o, dict) and "resolvedSpec" in o]
    lines = [f"rss {_rss_mb():.1f} MB; {_malloc_totals()}; {len(objects)} gc objects",
             f"metadata dicts with managedFields: {len(full_meta)}",
             f"status dicts with resolvedSpec: {len(resolved)}, "
             f"of them a parsed dict: {sum(isinstance(o['resolvedSpec'], dict) for o in resolved)}",
             "== types ==", *(f"{n} {t}" for t, n in types.most_common(30))]
    ignore = {id(objects), id(full_meta), id(resolved)}

    def describe(obj: object) -> str:
        if isinstance(obj, dict):
            return f"dict keys={list(obj)[:6]}"
        return type(obj).__qualname__

    chains: Counter = Counter()
    for sample in (full_meta[::max(1, len(full_meta) // 20)] + resolved[::max(1, len(resolved) // 20)])[:40]:
        chain, obj = [], sample
        for _ in range(5):
            holders = [r for r in gc.get_referrers(obj) if id(r) not in ignore and r is not objects
                       and type(r).__name__ != "frame"]
            if not holders:
                break
            obj = holders[0]
            chain.append(describe(obj))
        chains[" <- ".join(chain)] += 1
    lines.append("== referrer chains (sampled) ==")
    lines.extend(f"{n} x {chain}" for chain, n in chains.most_common())
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n== sys._debugmallocstats ==\n")
        out.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.write("== largest mappings (smaps Rss, kB) ==\n")
        out.writelines(_largest_mappings())


def _largest_mappings(count: int = 15) -> list[str]:
    maps, current = [], ""
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if line.startswith("Rss:"):
                maps.append((int(line.split()[1]), current))
            elif not line[0].isupper() or "-" in line.split()[0]:
                current = line.strip()
    return [f"{kb} {name}\n" for kb, name in sorted(maps, reverse=True)[:count]]

"""The heaps of a long-running operator process: Python's cyclic collector tuned for a stream of
watch events; glibc's C heap with fewer arenas and its free pages handed back.

Python objects over 512 bytes (dict tables of job bodies, JSON text, TLS buffers) come from
malloc. glibc keeps what a burst freed (a 5000-job submission, a relist) for reuse instead of
returning it, and gives each thread that allocates an arena of its own (up to 8 per core) whose
free space no other thread reuses. Both show as RSS that never goes down. Elsewhere than glibc
(musl, macOS) these calls are skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging

log = logging.getLogger(__name__)
M_ARENA_MAX = -8
"""mallopt parameter: the most arenas glibc creates (malloc.h)."""
GC_THRESHOLDS = (10_000, 10, 100)
"""Python's collector: a young collection per 10,000 net new container objects (default 700), a
full one considered after 100 middle ones (default 10). Every watch event parses into thousands
of dicts and lists; the few still alive at a young collection (queued, indexed) were promoted,
and the default thresholds then ran a full collection every ~2.5 s at 1000 jobs, each holding the
GIL for 100-250 ms: the event loop and every worker thread stopped (bench/RESULTS.md)."""


def tune_collector(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Sets the collector's thresholds and moves every object alive now (modules, the API client's
    classes, settings) out of all later collections: call once, after the imports, before kopf runs."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def cap_arenas(count: int) -> bool:
    """At most `count` malloc arenas from now on (call before threads start); False if not glibc."""
    libc = _glibc()
    if libc is None or count <= 0:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, count))


def trim() -> bool:
    """Hands the heap's free pages back to the system; True when some were."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))

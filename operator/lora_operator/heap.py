"""The C heap of a long-running operator process (glibc): fewer arenas, free pages handed back.

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
import logging

log = logging.getLogger(__name__)
M_ARENA_MAX = -8
"""mallopt parameter: the most arenas glibc creates (malloc.h)."""


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

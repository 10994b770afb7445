"""``python -m tinyworld [KIND ...]``: build (or find in the cache) the pretrained tiny bases (default: the prebuilt
ones); prints their folders. Builds run side by side, one process per CPU core: each trains on one torch thread
(`pretrain.Recipe.threads`), so one at a time would leave cores idle (build times: bench/RESULTS.md)."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor

from .cache import PREBUILT, RECIPES, tinybase


def main(argv: list[str]) -> int:
    """Build the bases named in `argv` (default: `PREBUILT`, what ``make tinybase`` builds) and print each folder."""
    kinds = argv or list(PREBUILT)
    unknown = [k for k in kinds if k not in RECIPES]
    if unknown:
        print(f"unknown base {unknown[0]!r}; choose from {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    with ProcessPoolExecutor(max_workers=max(1, min(len(kinds), os.cpu_count() or 1))) as pool:
        for kind, folder in zip(kinds, pool.map(tinybase, kinds), strict=True):
            print(f"{kind}: {folder}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

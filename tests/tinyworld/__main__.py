"""``python -m tinyworld [KIND ...]``: build (or find in the cache) the pretrained tiny bases (default: the prebuilt
ones); prints their folders."""

from __future__ import annotations

import sys

from .cache import PREBUILT, RECIPES, tinybase


def main(argv: list[str]) -> int:
    """Build the bases named in `argv` (default: `PREBUILT`, what ``make tinybase`` builds) and print each folder."""
    kinds = argv or list(PREBUILT)
    unknown = [k for k in kinds if k not in RECIPES]
    if unknown:
        print(f"unknown base {unknown[0]!r}; choose from {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    for kind in kinds:
        print(f"{kind}: {tinybase(kind)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`python -m tinymodels FAMILY PATH`: write a tiny model folder (tests/ must be on PYTHONPATH)."""

import sys
from pathlib import Path

from . import build_tiny_model

if len(sys.argv) != 3:
    raise SystemExit("usage: python -m tinymodels FAMILY PATH")
print(build_tiny_model(sys.argv[1], Path(sys.argv[2])))

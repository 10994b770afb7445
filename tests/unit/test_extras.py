"""The `cli` extra holds everything the laptop tools import (kubectl-lora, `lora-train upload`), and no torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAPTOP_MODULES = ["lora_operator.kubectl_lora.cli", "lora_operator.kubectl_lora.ui",
                  "lora_trainer.cli", "lora_trainer.upload"]


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def closure(names: set[str]) -> set[str]:
    """`names` and what they require (extras and environment markers left out), transitively."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in metadata.requires(name) or []:
            if "extra ==" not in req and not re.search(r"sys_platform|python_version\s*<", req):
                todo.append(requirement_name(req))
    return seen


def top_level_modules(imports: list[str]) -> set[str]:
    """Top-level modules loaded in a fresh interpreter that imports `imports`."""
    script = (f"import sys, json; [__import__(m) for m in {imports!r}]; "
              "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    run = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return set(json.loads(run.stdout))


def test_the_cli_extra_covers_what_the_laptop_tools_import():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {requirement_name(r) for r in project["dependencies"] + project["optional-dependencies"]["cli"]}
    allowed = closure(declared)
    loaded = top_level_modules(LAPTOP_MODULES) - top_level_modules([])  # less what site start-up loads
    owners = metadata.packages_distributions()
    third_party = {dist.lower().replace("_", "-") for module in loaded for dist in owners.get(module, [])
                   if module not in sys.stdlib_module_names and not module.startswith("lora_")}
    assert "torch" not in third_party
    assert third_party <= allowed, f"imported but not in the cli extra: {sorted(third_party - allowed)}"

"""The Helm chart rendered by the real `helm` binary of the test ground, for the chart's unit tests.

helm is built from its Go module by tests/cluster/build-tools.sh into $LORA_TOOLS_DIR or
~/.cache/lora-operator/tools/<versions>/. Without it the tests fail (run `make tools`), they never
skip: a chart nobody renders is a chart nobody knows works.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "lora-operator"
KUBE_VERSION = "1.34.0"  # helm built from source assumes v1.20 unless told; the chart needs >= 1.29


def _find_helm() -> Path | None:
    tools = os.environ.get("LORA_TOOLS_DIR")
    candidates = [Path(tools) / "helm"] if tools else []
    candidates += sorted(Path.home().glob(".cache/lora-operator/tools/*/helm"))
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def helm_binary() -> Path:
    """The helm binary; fails the test (never skips it) when it is not built."""
    found = _find_helm()
    if found is None:
        pytest.fail(
            "helm binary not found: looked in $LORA_TOOLS_DIR/helm and ~/.cache/lora-operator/tools/*/helm. "
            "Build the test ground's tools with `make tools` (tests/cluster/build-tools.sh)."
        )
    return found


@pytest.fixture(scope="module")
def helm() -> Path:
    """The test ground's helm binary (a module's `helm = chart.helm` makes it that module's fixture)."""
    return helm_binary()


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """helm with `args`; with `check`, a failure is an AssertionError carrying helm's output."""
    result = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@functools.cache
def _render_cached(helm: Path, sets: tuple[str, ...]) -> tuple[dict, ...]:
    args = ["template", "lora", str(CHART), "--namespace", "lora-system", "--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    return tuple(doc for doc in yaml.safe_load_all(run_helm(helm, *args).stdout) if doc)


def render(helm: Path, *sets: str) -> list[dict]:
    """The chart's objects as release `lora` in lora-system with `--set` values `sets` (cached)."""
    return list(_render_cached(helm, tuple(sets)))


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_container(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def granted_by(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs of a role's rules."""
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted

"""Where the test ground's binaries are: built from Go modules into a cache outside the clone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "cluster" / "build-tools.sh"
VERSIONS = REPO / "tests" / "cluster" / "versions.env"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm", "minio",
            "promtool", "kueue", "kwok-node-stages.yaml")


class ToolsMissing(RuntimeError):
    """A binary of the test ground is not built; the message says how to build it."""


def versions() -> dict[str, str]:
    """The pinned versions from tests/cluster/versions.env."""
    pairs = (line.split("=", 1) for line in VERSIONS.read_text().splitlines() if "=" in line and line[0] != "#")
    return {key: value.strip() for key, value in pairs}


def tools_dir(build: bool = False) -> Path:
    """The folder holding every binary; builds them first when `build` is set and one is missing.

    The folder is keyed by the pinned versions, so a change of version builds into a new one.
    """
    if os.environ.get("LORA_TOOLS_DIR"):
        folder = Path(os.environ["LORA_TOOLS_DIR"])
    else:
        v = versions()
        folder = Path.home() / ".cache/lora-operator/tools" / (
            f"k8s-{v['K8S_VERSION']}-etcd-{v['ETCD_VERSION']}-kwok-{v['KWOK_VERSION']}"
            f"-helm-{v['HELM_VERSION']}-minio-{v['MINIO_VERSION'][-12:]}")
    missing = [b for b in BINARIES if not (folder / b).exists()]
    if missing and build:
        subprocess.run(["bash", str(BUILD_SCRIPT), str(folder)], check=True)
        missing = [b for b in BINARIES if not (folder / b).exists()]
    if missing:
        raise ToolsMissing(f"missing {', '.join(missing)} in {folder}: run `make tools` (first build ~15-20 min)")
    return folder

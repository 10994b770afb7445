"""Fixtures of the fault tests: each test gets a test ground of its own (kill -9, outages and
restarts must not touch the session's shared ground)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from testground import Ground
from testground.operator import install_crds


@pytest.fixture
def work():
    """A private folder for the ground, logs and pods. Not pytest's tmp_path: other pytest runs on the
    machine prune old basetemp folders, which would pull the kubeconfig from under a long chaos run."""
    path = Path(tempfile.mkdtemp(prefix="lora-chaos-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_ground(work):
    """A fresh control plane + kwok + MinIO with the CRDs installed; stopped after the test."""
    ground = Ground.up(work / "ground")
    try:
        install_crds(ground)
        yield ground
    finally:
        ground.down()

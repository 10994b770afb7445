"""Session fixtures for the real test ground (tests/testground): MinIO and the local control plane.

Nothing here is a mock: the fixtures start real binaries built from Go modules (`make tools`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from testground import Ground, MinioServer, tools_dir


@pytest.fixture(scope="session")
def minio_server():
    """A standalone real MinIO for storage and trainer tests; `.stop()`/`.start()` simulate outages."""
    workdir = Path(tempfile.mkdtemp(prefix="lora-minio-"))
    server = MinioServer(tools_dir() / "minio", workdir / "data", workdir / "minio.log").start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def ground():
    """The whole test ground: etcd, kube-apiserver, controller-manager, scheduler, kwok, MinIO."""
    workdir = Path(tempfile.mkdtemp(prefix="lora-ground-"))
    g = Ground.up(workdir)
    print(f"\ntest ground up in {g.startup_seconds:.1f}s ({workdir})")
    yield g
    g.down()
    shutil.rmtree(workdir, ignore_errors=True)

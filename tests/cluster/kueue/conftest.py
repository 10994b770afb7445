"""The Kueue cluster tests' shared fixtures: one Kueue manager for the package (built from its Go
module, on the session's ground, with 3 kwok GPU nodes of its pool) and the pod-history watcher of
the fault tests, which records every trainer pod from before Kueue starts to the package's last
test (`test_kueue_admission.test_no_node_ever_held_two_trainer_pods_and_no_job_had_two`, which
runs after the others)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.chaoslib import PodHistory
from cluster.kueue.kueuelib import CONFIG, NS, POOL, queues
from testground.kueue import KueueManager
from testground.operator import install_crds

HERE = Path(__file__).parent
HISTORY_CHECK = "test_no_node_ever_held_two_trainer_pods_and_no_job_had_two"
"""The test that reads the history of every other test here: moved after them."""


def pytest_collection_modifyitems(items):
    """Moves `HISTORY_CHECK` after this package's other tests (not to the session's end: the
    package's fixtures, the history among them, end with its last test)."""
    ours = [item for item in items if item.path.parent == HERE]
    check = next((item for item in ours if item.name == HISTORY_CHECK), None)
    if check is None or check is ours[-1]:
        return
    items.remove(check)
    items.insert(items.index(ours[-1]) + 1, check)


@pytest.fixture(scope="package")
def history(ground):
    """Every trainer pod's changes from the package's start, from a watch of the test's own."""
    watcher = PodHistory(ground).start()
    yield watcher
    watcher.stop()


@pytest.fixture(scope="package")
def kueue(ground, tmp_path_factory, history):
    install_crds(ground)
    ground.kubectl("create", "namespace", NS)
    ground.kubectl("create", "serviceaccount", CONFIG.trainer_service_account, "-n", NS)  # the operator makes it
    nodes = ground.add_gpu_nodes(3, prefix="kq", labels=POOL)  # 3 nodes of 8 GPUs; the quota holds 2 of them
    manager = KueueManager(ground.control_plane, ground.bin_dir / "kueue", tmp_path_factory.mktemp("kueue"))
    try:
        manager.start(ground.kubectl)
        ground.apply(queues())
        yield manager
    finally:
        manager.stop(ground.kubectl)
        # the session's ground goes on: later modules count on their own nodes only
        ground.kubectl("delete", "namespace", NS, "--wait=false")
        ground.kubectl("delete", "node", *nodes)
        ground.node_names[:] = [n for n in ground.node_names if n not in nodes]

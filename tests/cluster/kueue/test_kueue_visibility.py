"""queuePosition of the jobs Kueue holds, from Kueue's visibility API: the real Kueue manager serves it
behind the test ground's apiserver aggregator (testground/kueue_visibility.py), the operator runs
under the Helm chart's RBAC (its ServiceAccount's token), and when the API goes away the operator
says so once and goes on without positions."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster.kueue.kueuelib import QUEUE, cluster_queue, flavor, local_queue
from lora_operator.k8s import Kube
from lora_operator.k8s_kueue import Unavailable
from lora_operator.render import pod_name
from testground.operator import OperatorProcess, kwok_job, run_kubectl_json, storage_secret
from testground.serviceaccount import service_account_kubeconfig

pytestmark = pytest.mark.cluster

NS = "kq-vis"
RELEASE = "kq-vis"
NOWHERE = {"lora-operator.io/pool": "kq-vis-none"}
"""The flavor's node labels, which no node has: the admitted Job's pod stays unscheduled and holds the
quota of one node (8 GPUs, the largest node's) for as long as the test needs."""
NAMES = ("v0", "v1", "v2")
CHART = Path(__file__).resolve().parents[3] / "helm/lora-operator"


def pending(ground) -> list[dict]:
    """The LocalQueue's pending workloads as `kubectl get --raw` shows them."""
    path = f"/apis/visibility.kueue.x-k8s.io/v1beta2/namespaces/{NS}/localqueues/{QUEUE}/pendingworkloads"
    return json.loads(ground.kubectl("get", "--raw", path).stdout)["items"]


def chart_rbac(ground) -> list[dict]:
    """The chart's ClusterRole and ClusterRoleBinding with Kueue enabled, for a release in `NS`."""
    rendered = subprocess.run([str(ground.bin_dir / "helm"), "template", RELEASE, str(CHART), "-n", NS,
                               "--kube-version", "1.31.0", "--set", "kueue.enabled=true",
                               "--show-only", "templates/rbac.yaml"], capture_output=True, text=True, check=True,
                              timeout=120).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


def kube_as(kubeconfig: Path) -> Kube:
    """The operator's adapter with a ServiceAccount's credentials."""
    from kubernetes import config

    return Kube(config.new_client_from_config(config_file=str(kubeconfig)))


def test_waiting_kueue_jobs_show_kueues_positions_and_go_on_without_them(ground, kueue, tmp_path):
    ground.kubectl("create", "namespace", NS)
    ground.apply(storage_secret(ground, NS))
    ground.apply([flavor("kq-vis", NOWHERE), cluster_queue("kq-vis-one-node", "kq-vis", 8),
                  local_queue(QUEUE, NS, "kq-vis-one-node")])
    rbac = chart_rbac(ground)
    account = next(s["name"] for d in rbac if d["kind"] == "ClusterRoleBinding" for s in d["subjects"])
    ground.kubectl("create", "serviceaccount", account, "-n", NS)
    ground.kubectl("create", "serviceaccount", "no-rbac", "-n", NS)
    ground.apply(rbac)
    as_chart = service_account_kubeconfig(ground, NS, account, tmp_path / "operator.kubeconfig")
    op = OperatorProcess(ground, tmp_path / "operator.log",
                         extra_env={"LORA_KUEUE_ENABLED": "1", "KUBECONFIG": str(as_chart)}).start()

    def status(name: str) -> dict:
        return run_kubectl_json(ground, "get", "ltj", "-n", NS, name).get("status") or {}

    def positions(names=NAMES) -> dict[str, int | None]:
        return {name: status(name).get("queuePosition") for name in names}

    try:
        for name in NAMES:
            job = kwok_job(name, "h100", namespace=NS, queueName=QUEUE)
            job["spec"].pop("placement")
            ground.apply(job)

        def two_placed_as_kueue_says() -> bool:
            items = pending(ground)
            return len(items) == 2 and sorted(p for p in positions().values() if p) == [1, 2]

        try:
            ground.wait_for(two_placed_as_kueue_says, timeout=180, what="two jobs at Kueue's places", interval=1)
        except TimeoutError:
            raise AssertionError(f"{positions()}\n{pending(ground)}\n--- operator log ---\n{op.tail(60)}") from None
        items = {p["metadata"]["ownerReferences"][0]["name"]: p for p in pending(ground)}
        shown = positions()
        waiting = [n for n in NAMES if pod_name(n, 1) in items]
        (admitted,) = set(NAMES) - set(waiting)
        for name in waiting:
            place = items[pod_name(name, 1)]
            assert shown[name] == place["positionInClusterQueue"] + 1, (shown, items)
            assert status(name)["message"].endswith(
                f"queuePosition {shown[name]} is Kueue's (its ClusterQueue's order; "
                f"{place['positionInLocalQueue'] + 1} in LocalQueue {QUEUE})"), status(name)["message"]
        assert shown[admitted] is None
        assert any(c["type"] == "KueueAdmitted" and c["status"] == "True" for c in status(admitted)["conditions"])
        head = next(n for n in waiting if shown[n] == 1)
        described = ground.kubectl("describe", "ltj", head, "-n", NS).stdout
        assert re.search(r"Queue Position:\s+1\n", described), described
        assert "queuePosition 1 is Kueue's" in described

        # the chart's rule is what lets the operator read it: a ServiceAccount without it gets a 403
        no_rbac = kube_as(service_account_kubeconfig(ground, NS, "no-rbac", tmp_path / "no-rbac.kubeconfig"))
        with pytest.raises(Unavailable, match="403"):
            no_rbac.kueue_pending_workloads(NS, QUEUE, "v1beta2", 10)
        chart = kube_as(as_chart)
        assert len(chart.kueue_pending_workloads(NS, QUEUE, "v1beta2", 10)["items"]) == 2
        assert chart.kueue_pending_workloads(NS, "no-such-queue", "v1beta2", 10) is None

        # the API goes away: positions are cleared, said once, and the jobs still follow Kueue
        kueue.unregister_visibility(ground.kubectl)
        with pytest.raises(Unavailable, match="404"):
            chart.kueue_pending_workloads(NS, QUEUE, "v1beta2", 10)
        ground.wait_for(lambda: set(positions().values()) == {None}, timeout=60, what="positions cleared",
                        interval=1)
        ground.kubectl("delete", "ltj", admitted, "-n", NS)  # its Job and Workload go: Kueue admits the head
        ground.wait_for(lambda: any(c["type"] == "KueueAdmitted" and c["status"] == "True"
                                    for c in status(head).get("conditions") or []),
                        timeout=120, what="the head job admitted by Kueue", interval=1)
        log = (tmp_path / "operator.log").read_text(errors="replace")
        assert log.count("Kueue's visibility API is not available") == 1, op.tail(40)
        assert set(positions(waiting).values()) == {None}
    finally:
        op.stop()
        kueue.register_visibility(ground.kubectl)
        ground.kubectl("delete", "namespace", NS, "--wait=false")
        for doc in rbac:
            ground.kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found")

"""The real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager,
scheduler, and kwok for fake GPU nodes. Every component is a real binary built from Go modules."""

from __future__ import annotations

import json
import ssl
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .pki import FRONT_PROXY_CLIENT, Pki, make_pki, write_kubeconfig
from .procs import Proc, free_port, wait_until

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_OPTIONS = {"podPlayStageParallelism": 32, "nodePlayStageParallelism": 16, "nodeLeaseParallelism": 16}
"""kwok plays every fake node's kubelet with a few workers (4 each by default), each waiting for its
API round trip: with 1000 nodes those workers, not the operator, set the pace of a drain (pods bound
but not Running, node leases late). A real cluster has a kubelet per node."""
NODE_STAGES = "kwok-node-stages.yaml"
"""kwok's own node stages (node-initialize, node-heartbeat-with-lease), copied from its module by
build-tools.sh. kwok 0.7 picks its 20-45 s node-status heartbeat when node leases are on (it passes
`lease == 0` to its default-stage choice): on top of the lease renewals, 1000 fake nodes then PATCHed
nodes/status 45 times a second, where real kubelets with leases report status every 5 minutes unless
it changed. Named in the config, the with-lease stage (every 10-20 minutes) applies."""
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {"level": "Request", "verbs": ["patch"],
         "resources": [{"group": "lora-operator.io", "resources": ["loratrainingjobs/status"]}]},
        {"level": "Request", "verbs": ["create"], "resources": [{"group": "", "resources": ["events"]}]},
        {"level": "Metadata"},
    ],
}
"""What `ControlPlane.audit_log` records: see `audit_flags`."""


@dataclass
class ControlPlane:
    """One local cluster in `workdir`, using the binaries in `bin_dir`."""

    bin_dir: Path
    workdir: Path
    etcd_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    procs: dict[str, Proc] = field(default_factory=dict)
    audit_log: Path | None = None
    """When set, the API server writes an audit event (metadata only: who, verb, object, code) for
    every request here: what tells which client sends which request (`bench/scale_audit.py`)."""

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def pki(self) -> Pki:
        return make_pki(self.workdir / "pki")

    def _proc(self, name: str, *args: str) -> Proc:
        return Proc(name, [str(self.bin_dir / name.split(":")[0]), *args], self.workdir / "logs" / f"{name}.log")

    def start(self, timeout: float = 120) -> ControlPlane:
        """Starts every component in order and waits until the cluster accepts pods."""
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        write_kubeconfig(self.kubeconfig, self.server, self.pki)
        self.start_etcd()
        self.start_apiserver(timeout)
        self.start_controllers()
        wait_until(self._default_service_account_exists, timeout, "the default ServiceAccount")
        return self

    def start_etcd(self) -> None:
        peer = free_port()
        self.procs["etcd"] = self._proc(
            "etcd", "--name", "default", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--quota-backend-bytes", str(4 << 30), "--log-level", "warn",
        ).start()

    def start_apiserver(self, timeout: float = 120) -> None:
        """Starts kube-apiserver (TLS, RBAC, service-account tokens) and waits for /readyz."""
        pki = self.pki
        self.procs["kube-apiserver"] = self._proc(
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={pki.serving_crt}", f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_crt}",
            f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--authorization-mode=Node,RBAC", "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true", "--max-requests-inflight=2000", "--max-mutating-requests-inflight=1000",
            "--enable-priority-and-fairness=false", "--event-ttl=30m", "--v=0",
            *self.aggregator_flags(pki), *self.audit_flags(),
        ).start()
        wait_until(self.ready, timeout, f"kube-apiserver\n{self.procs['kube-apiserver'].tail()}", 0.25)

    @staticmethod
    def aggregator_flags(pki: Pki) -> list[str]:
        """The aggregator's flags, for extension API servers (Kueue's visibility API): it calls them
        with the front proxy's client certificate and the user in request headers, and, with no
        kube-proxy on the ground, at their Service's endpoint address rather than its cluster IP."""
        return [
            "--enable-aggregator-routing=true",
            f"--proxy-client-cert-file={pki.front_proxy_crt}", f"--proxy-client-key-file={pki.front_proxy_key}",
            f"--requestheader-client-ca-file={pki.front_proxy_ca}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group", "--requestheader-username-headers=X-Remote-User",
        ]

    def audit_flags(self) -> list[str]:
        """The audit log's flags (none unless `audit_log` is set): every request at level Metadata
        (a job's status patch and an Event's creation at level Request: with the body, which tells
        which write or which Event it was), one event each when its response is complete, written
        in batches (not in the request's path). One file however large: a max size of 0 is not "no
        limit" but the log writer's default of 100 MB, past which it renamed the log aside and the
        bench read only the rest (a 2000-job run at 1000 nodes writes 130 MB)."""
        if self.audit_log is None:
            return []
        policy = self.workdir / "audit-policy.json"
        policy.write_text(json.dumps(AUDIT_POLICY))
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
                "--audit-log-mode=batch", "--audit-log-maxsize=1000000"]

    def start_controllers(self) -> None:
        """controller-manager (garbage collection, pod GC, node lifecycle), scheduler and kwok."""
        kubeconfig = str(self.kubeconfig)
        self.procs["kube-controller-manager"] = self._proc(
            "kube-controller-manager", f"--kubeconfig={kubeconfig}", "--leader-elect=false",
            f"--secure-port={free_port()}", "--bind-address=127.0.0.1",
            f"--service-account-private-key-file={self.pki.sa_key}", f"--root-ca-file={self.pki.ca_crt}",
            "--use-service-account-credentials=false", "--controllers=*,-nodeipam,-cloud-node-lifecycle",
            "--terminated-pod-gc-threshold=100000", "--kube-api-qps=200", "--kube-api-burst=400",
        ).start()
        self.procs["kube-scheduler"] = self._proc(
            "kube-scheduler", f"--kubeconfig={kubeconfig}", "--leader-elect=false",
            f"--secure-port={free_port()}", "--bind-address=127.0.0.1",
        ).start()
        self.procs["kwok"] = self._proc(
            "kwok", f"--kubeconfig={kubeconfig}",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            f"--server-address=127.0.0.1:{free_port()}", "--node-lease-duration-seconds=40",
            "--cidr=10.0.0.1/16", f"--config={self.kwok_config()}",
        ).start()

    def kwok_config(self) -> Path:
        """kwok's config (`KWOK_OPTIONS` and `NODE_STAGES`), written into the work folder."""
        path = self.workdir / "kwok.yaml"
        options = json.dumps({"apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration",
                              "options": KWOK_OPTIONS})
        path.write_text(f"{options}\n---\n{(self.bin_dir / NODE_STAGES).read_text()}")
        return path

    def restart_apiserver(self) -> None:
        """Stops and starts kube-apiserver on the same port (a control-plane outage)."""
        self.procs["kube-apiserver"].stop()
        self.start_apiserver()

    def ready(self) -> bool:
        """True when the apiserver answers /readyz with ok."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        ctx.load_cert_chain(str(self.pki.admin_crt), str(self.pki.admin_key))
        with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=3) as resp:
            return resp.read() == b"ok"

    def _default_service_account_exists(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        ctx.load_cert_chain(str(self.pki.admin_crt), str(self.pki.admin_key))
        url = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
        with urllib.request.urlopen(url, context=ctx, timeout=3) as resp:
            return resp.status == 200

    def stop(self) -> None:
        """Stops every component, newest first."""
        for name in reversed(list(self.procs)):
            self.procs[name].stop()
        self.procs.clear()

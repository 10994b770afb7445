"""Kueue on the test ground: its manager binary (built like the other tools) as a process against the
local apiserver, with its webhooks served on loopback under a certificate of the ground's CA.

Kueue's CRDs and webhook configurations come from its Go module's source (config/components, the
version pinned in tests/cluster/versions.env). In a cluster kustomize points them at Kueue's
webhook Service; here they are pointed at https://127.0.0.1:<port> with the CA inline. Only the
webhooks of what the ground runs are registered (Kueue's own kinds and batch/v1 Jobs): the
manifests also hold webhooks for Pods, Deployments, Ray, JobSet ... which this manager, with only
the batch/job integration on, does not serve, and a registered webhook nobody serves refuses
every Pod. Its visibility API (pending workloads and their positions) is registered with the
apiserver's aggregator: see kueue_visibility.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import kueue_visibility as visibility
from .controlplane import ControlPlane
from .pki import Pki, _signed_cert
from .procs import Proc, free_port, wait_until
from .tools import versions

NAMESPACE = "kueue-system"
METRICS_CERTS = Path("/etc/kueue/metrics/certs")
"""Without its internal cert management Kueue's manager reads its metrics certificate from this fixed
path (cmd/kueue/main.go, v0.19) and exits when it is missing, even with metrics off; its internal cert
management is no way out, as its certificates name the webhook Service, not 127.0.0.1."""
SERVED_PATHS = ("-kueue-x-k8s-io-", "-batch-v1-job")
"""Webhook paths this manager serves (its own kinds, batch/v1 Jobs); the manifests' other webhooks are left out."""
CONVERTED_CRDS = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
"""The CRDs whose kustomize patch (config/components/crd/patches) turns on the conversion webhook."""


def module_dir(version: str | None = None) -> Path:
    """Kueue's module source in the Go module cache (downloaded when missing)."""
    version = version or versions()["KUEUE_VERSION"]
    out = subprocess.run(["go", "mod", "download", "-json", f"sigs.k8s.io/kueue@{version}"], check=True,
                         capture_output=True, text=True, cwd="/")
    return Path(json.loads(out.stdout)["Dir"])


def serving_cert(pki: Pki, folder: Path) -> Path:
    """A serving certificate for 127.0.0.1 from the ground's CA, as tls.crt/tls.key in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (pki.folder / "kueue-webhook.crt").exists():
        _signed_cert(pki.folder, "kueue-webhook", "/CN=kueue-webhook",
                     "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    shutil.copy(pki.folder / "kueue-webhook.crt", folder / "tls.crt")
    shutil.copy(pki.folder / "kueue-webhook.key", folder / "tls.key")
    return folder


def _client_config(url: str, ca: str, path: str) -> dict:
    return {"url": f"{url}{path}", "caBundle": ca}


def crds(source: Path, url: str, ca: str) -> list[dict]:
    """Kueue's CRDs, those with a conversion webhook pointed at `url`."""
    docs = []
    for path in sorted((source / "config/components/crd/bases").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["plural"] in CONVERTED_CRDS:
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "clientConfig": _client_config(url, ca, "/convert"), "conversionReviewVersions": ["v1"]}}
        docs.append(crd)
    return docs


def webhook_configurations(source: Path, url: str, ca: str) -> list[dict]:
    """Kueue's mutating and validating webhook configurations, the served ones only, pointed at `url`."""
    docs = [d for d in yaml.safe_load_all((source / "config/components/webhook/manifests.yaml").read_text()) if d]
    for doc in docs:
        doc["metadata"]["name"] = "kueue-" + doc["metadata"]["name"]
        doc["webhooks"] = [w for w in doc["webhooks"]
                           if any(p in w["clientConfig"]["service"]["path"] for p in SERVED_PATHS)]
        for hook in doc["webhooks"]:
            hook["clientConfig"] = _client_config(url, ca, hook["clientConfig"]["service"]["path"])
    return docs


@dataclass
class KueueManager:
    """Kueue's manager on the ground's control plane; `start()` returns once its webhooks answer."""

    control_plane: ControlPlane
    binary: Path
    workdir: Path
    webhook_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    visibility_address: str = field(default_factory=visibility.host_ip)
    visibility_port: int = 0
    """Where its visibility API listens (0: a free port at `start`)."""
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    def config(self, cert_dir: Path) -> dict:
        """Kueue's Configuration: batch/v1 Jobs only, webhooks on loopback, the visibility API on this
        machine's address (see kueue_visibility), no leader election."""
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {"port": self.webhook_port, "host": "127.0.0.1", "certDir": str(cert_dir)},
            "visibilityServer": {"bindAddress": self.visibility_address, "bindPort": self.visibility_port},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "integrations": {"frameworks": ["batch/job"]},
        }

    def start(self, kubectl, timeout: float = 180) -> KueueManager:
        """Installs the CRDs, starts the manager, then registers its webhooks and visibility API.

        Args:
            kubectl: ``kubectl(*args, input=...)`` against the ground (``Ground.kubectl``).
            timeout: seconds to wait for the manager's readiness.
        """
        source = module_dir()
        pki = self.control_plane.pki
        ca = base64.b64encode(pki.ca_crt.read_bytes()).decode()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cert_dir = serving_cert(pki, self.workdir / "certs")
        try:
            serving_cert(pki, METRICS_CERTS)
        except OSError as err:
            raise RuntimeError(f"Kueue's manager needs a certificate under {METRICS_CERTS} (a path fixed in "
                               f"its code) and this user cannot write there: {err}") from err
        visibility.serving_cert(NAMESPACE)  # before the manager reads it
        self.visibility_port = self.visibility_port or visibility.free_port_on(self.visibility_address)
        definitions = crds(source, self.url, ca)
        kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(definitions))
        # kubectl wait fails at once on a CRD whose status has no conditions yet: asked again until it waits
        names = [f"crd/{d['metadata']['name']}" for d in definitions]
        wait_until(lambda: kubectl("wait", "--for=condition=Established", "--timeout=60s", *names, check=False,
                                   timeout=70).returncode == 0, 90, "Kueue's CRDs established", 0.5)
        kubectl("create", "namespace", NAMESPACE, check=False)
        config = self.workdir / "config.yaml"
        config.write_text(yaml.safe_dump(self.config(cert_dir)))
        kubeconfig = str(self.control_plane.kubeconfig)
        # the visibility server's delegated authentication reads the --kubeconfig flag, not $KUBECONFIG
        self.proc = Proc("kueue", [str(self.binary), f"--config={config}", f"--kubeconfig={kubeconfig}"],
                         self.workdir / "kueue.log", env={"KUBECONFIG": kubeconfig}).start()
        try:
            wait_until(self.ready, timeout, "kueue", 0.5)
        except TimeoutError as err:
            raise TimeoutError(f"{err}; its log ends:\n{self.tail()}") from None
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(webhook_configurations(source, self.url, ca)))
        self.register_visibility(kubectl, timeout)
        return self

    def register_visibility(self, kubectl, timeout: float = 60) -> None:
        """Registers its visibility API with the aggregator (Service, EndpointSlice, APIServices) and
        waits until the apiserver finds it available."""
        ca = visibility.serving_cert(NAMESPACE).read_bytes()
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
            visibility.objects(NAMESPACE, self.visibility_address, self.visibility_port, ca)))
        kubectl("wait", "--for=condition=Available", f"--timeout={timeout:.0f}s", *visibility.api_services(),
                timeout=timeout + 10)
        # Available comes from the availability controller's own probe: the proxy may still answer 503 a moment
        wait_until(lambda: all(kubectl("get", "--raw", f"/apis/{visibility.GROUP}/{version}", check=False).returncode
                               == 0 for version in visibility.VERSIONS), timeout, "Kueue's visibility API", 0.2)

    def unregister_visibility(self, kubectl) -> None:
        """Removes its APIServices: the apiserver no longer serves the visibility API (404)."""
        kubectl("delete", *visibility.api_services(), "--ignore-not-found", check=False)

    def ready(self) -> bool:
        """Its health probe says ready and its webhook server answers TLS from the ground's CA."""
        if self.proc is None or not self.proc.alive():
            raise RuntimeError(f"kueue exited\n{self.tail()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=3) as resp:
            if resp.status != 200:
                return False
        ctx = ssl.create_default_context(cafile=str(self.control_plane.pki.ca_crt))
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.webhook_port), 3),
                             server_hostname="127.0.0.1"):
            return True

    def tail(self, lines: int = 40) -> str:
        log = self.workdir / "kueue.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def stop(self, kubectl) -> None:
        """Unregisters the webhooks and the visibility API first: a registered webhook nobody serves
        refuses every Job after, and an unavailable APIService fails API discovery (kubectl's too)."""
        self.unregister_visibility(kubectl)
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            kubectl("delete", kind, f"kueue-{kind.replace('webhookconfiguration', '')}-webhook-configuration",
                    "--ignore-not-found", check=False)
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

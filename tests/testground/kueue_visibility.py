"""Kueue's visibility API (``visibility.kueue.x-k8s.io``, its pending workloads) on the test ground.

Kueue's manager serves it as an extension API server that the kube-apiserver's aggregator calls,
as in a cluster. Three things of a cluster the ground lacks, and what stands in for them:

- The certificate. The visibility server reads ``/visibility/tls.{crt,key}``, a path fixed in its
  code (pkg/visibility/server.go, v0.19), with no flag or config field to move it. One self-signed
  certificate for its Service's DNS name is made there once per machine (never rewritten: every
  Kueue on the machine, of any ground, serves it, and its own file watcher would hand a rewritten
  one to a running server whose APIService trusts the old one); each ground's APIService trusts it
  through its caBundle.
- The Service's address. With no kube-proxy the aggregator routes to the Service's endpoint
  (``--enable-aggregator-routing``, controlplane.py), and endpoints may not be loopback addresses:
  the server listens on this machine's own non-loopback address, named in an EndpointSlice.
- The aggregator's client certificate and request-header flags (controlplane.py, pki.py).
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import tempfile
from pathlib import Path

CERT_DIR = Path("/visibility")
"""Where Kueue's visibility server reads tls.crt and tls.key (fixed in its code)."""
SERVICE = "visibility-server"
"""The Service's name, as in Kueue's config/components/visibility."""
VERSIONS = ("v1beta2", "v1beta1")
"""The versions Kueue v0.19 serves (v1beta2 preferred)."""
GROUP = "visibility.kueue.x-k8s.io"
MANAGED_BY = "lora-testground"
"""The EndpointSlice's managed-by label: not the endpointslice controller's, so it leaves the slice alone."""


def host_ip() -> str:
    """This machine's first non-loopback IPv4 address (what `hostname -I` lists first)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()
    for address in out:
        if "." in address and not address.startswith("127."):
            return address
    raise RuntimeError(f"Kueue's visibility API needs a non-loopback IPv4 address on this machine; "
                       f"`hostname -I` lists {out}")


def free_port_on(address: str) -> int:
    """A TCP port nobody listens on at `address` right now."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def serving_cert(namespace: str) -> Path:
    """The visibility server's certificate (made once, see the module's docstring): its path."""
    crt = CERT_DIR / "tls.crt"
    if crt.exists():
        return crt
    folder = Path(tempfile.mkdtemp(prefix="visibility-", dir=CERT_DIR.parent))
    dns = f"{SERVICE}.{namespace}.svc"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", "tls.key", "-out", "tls.crt", "-days", "3650", "-subj", f"/CN={dns}",
                    "-addext", f"subjectAltName=DNS:{dns}", "-addext", "extendedKeyUsage=serverAuth"],
                   cwd=folder, check=True, capture_output=True)
    folder.chmod(0o755)
    try:
        os.rename(folder, CERT_DIR)  # atomic: a Kueue started beside this one sees both files or none
    except OSError:  # another process made it first: theirs it is
        for name in ("tls.crt", "tls.key"):
            (folder / name).unlink()
        folder.rmdir()
    return crt


def objects(namespace: str, address: str, port: int, ca: bytes) -> list[dict]:
    """The Service, its EndpointSlice at `address`:`port` and the APIServices of every version."""
    bundle = base64.b64encode(ca).decode()
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": namespace},
         "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{SERVICE}-host", "namespace": namespace,
                      "labels": {"kubernetes.io/service-name": SERVICE,
                                 "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
         "addressType": "IPv4", "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
        *({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
           "metadata": {"name": f"{version}.{GROUP}"},
           "spec": {"group": GROUP, "version": version, "groupPriorityMinimum": 100, "versionPriority": 100,
                    "caBundle": bundle, "service": {"name": SERVICE, "namespace": namespace, "port": 443}}}
          for version in VERSIONS),
    ]


def api_services() -> list[str]:
    """The APIServices' names (`kubectl wait` / `delete` arguments)."""
    return [f"apiservice/{version}.{GROUP}" for version in VERSIONS]

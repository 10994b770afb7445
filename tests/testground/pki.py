"""A throw-away PKI for the local control plane: CA, serving cert, admin client cert, SA keys, and
the front proxy's CA and client cert with which the apiserver's aggregator calls extension API
servers (Kueue's visibility API)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Pki:
    """Paths of the generated keys and certificates."""

    folder: Path

    @property
    def ca_crt(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def serving_crt(self) -> Path:
        return self.folder / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.folder / "apiserver.key"

    @property
    def admin_crt(self) -> Path:
        return self.folder / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.folder / "admin.key"

    @property
    def front_proxy_ca(self) -> Path:
        """The CA extension API servers trust for the aggregator's client certificate (requestheader CA)."""
        return self.folder / "front-proxy-ca.crt"

    @property
    def front_proxy_crt(self) -> Path:
        return self.folder / "front-proxy-client.crt"

    @property
    def front_proxy_key(self) -> Path:
        return self.folder / "front-proxy-client.key"

    @property
    def sa_key(self) -> Path:
        return self.folder / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.folder / "sa.pub"


FRONT_PROXY_CLIENT = "front-proxy-client"
"""The aggregator's client certificate's CN: the only name extension API servers accept it from."""


def _signed_cert(folder: Path, name: str, subject: str, ext: str, ca: str = "ca") -> None:
    """A key and a certificate `name`.crt signed by `ca`.crt with the given extensions."""
    (folder / f"{name}.ext").write_text(ext)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=folder)


def _self_signed_ca(folder: Path, name: str, subject: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "30", "-subj", subject, cwd=folder)


def make_pki(folder: Path) -> Pki:
    """Creates (once) the CA, the apiserver's serving cert, a cluster-admin client cert, SA keys and
    the front proxy's CA and client cert (a CA of its own, as kubeadm makes: a client certificate of
    the cluster CA must not pass for the aggregator)."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(folder)
    if pki.sa_pub.exists():
        return pki
    _self_signed_ca(folder, "ca", "/CN=lora-testground-ca")
    _self_signed_ca(folder, "front-proxy-ca", "/CN=lora-testground-front-proxy-ca")
    _signed_cert(folder, FRONT_PROXY_CLIENT, f"/CN={FRONT_PROXY_CLIENT}", "extendedKeyUsage=clientAuth\n",
                 ca="front-proxy-ca")
    _signed_cert(folder, "apiserver", "/CN=kube-apiserver",
                 "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
                 "DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n")
    _signed_cert(folder, "admin", "/O=system:masters/CN=admin", "extendedKeyUsage=clientAuth\n")
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=folder)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=folder)
    return pki


def write_kubeconfig(path: Path, server: str, pki: Pki) -> Path:
    """A kubeconfig for the cluster-admin client certificate."""
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: testground
  cluster:
    server: {server}
    certificate-authority: {pki.ca_crt}
users:
- name: admin
  user:
    client-certificate: {pki.admin_crt}
    client-key: {pki.admin_key}
contexts:
- name: testground
  context: {{cluster: testground, user: admin, namespace: default}}
current-context: testground
""")
    return path

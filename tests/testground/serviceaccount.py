"""Credentials of a ServiceAccount on the test ground: a TokenRequest token in a kubeconfig.

A process run with this kubeconfig is authorised exactly as a pod of that ServiceAccount would
be, so RBAC written for the pod (e.g. the Helm chart's ClusterRole) is what it gets, no more.
"""

from __future__ import annotations

import json
from pathlib import Path

from .ground import Ground


def service_account_kubeconfig(ground: Ground, namespace: str, name: str, path: Path,
                               duration: str = "1h") -> Path:
    """Mints a token for `namespace/name` (TokenRequest API) and writes a kubeconfig using it.

    Args:
        ground: the running test ground (its CA and apiserver address go into the kubeconfig).
        namespace: namespace of the ServiceAccount.
        name: name of the ServiceAccount.
        path: where to write the kubeconfig (JSON, which every kubeconfig reader accepts).
        duration: lifetime of the token, as `kubectl create token --duration` takes it.

    Returns:
        `path`.
    """
    token = ground.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()
    user = f"system:serviceaccount:{namespace}:{name}"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "testground", "cluster": {
            "server": ground.control_plane.server,
            "certificate-authority": str(ground.control_plane.pki.ca_crt)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "testground", "context": {"cluster": "testground", "user": user,
                                                        "namespace": namespace}}],
        "current-context": "testground",
    }, indent=2))
    path.chmod(0o600)
    return path


__all__ = ["service_account_kubeconfig"]

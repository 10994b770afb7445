"""The in-cluster dashboard acts only as each request: no token, no answer; a ServiceAccount token
with a namespaced Role sees that namespace's jobs, and a token without one sees nothing (real API
server, real TokenRequest tokens, the server run as its own process without any credentials)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from testground.operator import install_crds, kwok_job
from testground.procs import free_port

pytestmark = pytest.mark.cluster


def get(url: str, token: str | None = None, header: str = "Authorization") -> tuple[int, str]:
    headers = {} if token is None else {header: f"Bearer {token}" if header == "Authorization" else token}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def incluster(ground, tmp_path):
    install_crds(ground)
    for ns in ("ui-team", "ui-other"):
        ground.kubectl("create", "namespace", ns)
        ground.kubectl("create", "serviceaccount", "person", "-n", ns)
    ground.kubectl("create", "role", "ltj-reader", "-n", "ui-team", "--verb=get,list,watch",
                   "--resource=loratrainingjobs.lora-operator.io")
    ground.kubectl("create", "rolebinding", "person-reads", "-n", "ui-team", "--role=ltj-reader",
                   "--serviceaccount=ui-team:person")
    ground.apply({**kwok_job("visible", "none"), "metadata": {"name": "visible", "namespace": "ui-team"}})
    port = free_port()
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "lora_operator.kubectl_lora.ui.incluster",
                             "--api-server", ground.control_plane.server,
                             "--ca-file", str(ground.control_plane.pki.ca_crt),
                             "--namespace", "ui-team", "--host", "127.0.0.1", "--port", str(port)],
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},  # no KUBECONFIG
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60

    def refused() -> bool:
        try:
            return get(url + "/")[0] == 401
        except urllib.error.URLError:
            return False

    try:
        while not refused():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError((tmp_path / "ui.log").read_text())
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def token(ground, namespace: str) -> str:
    return ground.kubectl("create", "token", "person", "-n", namespace, "--duration=1h").stdout.strip()


def test_requests_act_only_with_their_own_token(ground, incluster):
    status, body = get(incluster + "/")
    assert status == 401 and "bearer token" in body
    status, body = get(incluster + "/jobs/visible")
    assert status == 401 and "visible" not in body

    reader = token(ground, "ui-team")
    status, body = get(incluster + "/", reader)
    assert status == 200 and "visible" in body
    status, body = get(incluster + "/jobs/visible", reader, header="X-Forwarded-Access-Token")
    assert status == 200 and "visible" in body

    stranger = token(ground, "ui-other")  # a valid token whose RBAC gives nothing in ui-team
    status, body = get(incluster + "/", stranger)
    assert "visible" not in body and "403" in body
    status, body = get(incluster + "/jobs/visible", stranger)
    assert status == 400 and "<title>error" in body  # the error page, none of the job's
    assert "User &#34;system:serviceaccount:ui-other:person&#34; cannot get resource" in body

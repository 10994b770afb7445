"""Every environment variable of the operator is read by `OperatorConfig`: the process settings kopf,
the heap and the diagnostics take keep their names and defaults, and a bad value stops the operator
at start with a message naming the variable."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import kopf
import pytest

from lora_operator import cli, handlers
from lora_operator.config import ENV_VARS, ConfigError, OperatorConfig

OPERATOR = Path(__file__).resolve().parents[2] / "operator" / "lora_operator"
READS_ITS_OWN_ENV = {
    "config.py": "the configuration itself",
    "storage/__init__.py": "the storage client of the trainer and kubectl-lora (S3_*, AWS_* of their shell or pod)",
    "storage/s3.py": "SSL_CERT_FILE, OpenSSL's own variable, for every user of the storage client",
    "kubectl_lora/objects.py": "the plugin, run in the user's shell",
    "kubectl_lora/ui/local.py": "the local dashboard (lora-train ui), run in the user's shell",
    "kubectl_lora/ui/upload.py": "hands the user's shell environment to the lora-train upload it runs",
    "kubectl_lora/ui/incluster.py": "the in-cluster dashboard's own Deployment settings, not the operator's",
    "handlers.py": "the pod's own name (HOSTNAME) as the instance of its Events: identity, not a setting",
}


def test_the_process_settings_keep_their_names_and_defaults():
    config = OperatorConfig.from_env({})
    tuning = (config.api_connections, config.list_chunk, config.peering_lifetime, config.malloc_arenas)
    assert tuning == (64, 500, 60, 2)
    assert (config.tracemalloc, config.tracemalloc_frames, config.tracemalloc_seconds) == ("", 10, 15.0)
    assert (config.peering_name, config.trainer_image_pull_policy, config.gpu_tolerations) == (
        "lora-operator", "IfNotPresent", [])
    env = {"LORA_API_CONNECTIONS": "8", "LORA_LIST_CHUNK": "50", "LORA_PEERING_LIFETIME": "5",
           "LORA_MALLOC_ARENAS": "0", "LORA_TRACEMALLOC": "/tmp/t", "LORA_TRACEMALLOC_FRAMES": "3",
           "LORA_TRACEMALLOC_SECONDS": "1.5", "LORA_PEERING_NAME": "blue", "LORA_TRAINER_IMAGE_PULL_POLICY": "Never"}
    config = OperatorConfig.from_env(env)
    assert (config.api_connections, config.list_chunk, config.peering_lifetime, config.malloc_arenas) == (8, 50, 5, 0)
    assert (config.tracemalloc, config.tracemalloc_frames, config.tracemalloc_seconds) == ("/tmp/t", 3, 1.5)
    assert (config.peering_name, config.trainer_image_pull_policy) == ("blue", "Never")


@pytest.mark.parametrize(("variable", "value"), [
    ("LORA_API_CONNECTIONS", "many"), ("LORA_API_CONNECTIONS", "0"),
    ("LORA_LIST_CHUNK", "-5"), ("LORA_PEERING_LIFETIME", "1.5"),
    ("LORA_MALLOC_ARENAS", "-1"), ("LORA_TRACEMALLOC_FRAMES", "0"), ("LORA_TRACEMALLOC_SECONDS", "0"),
    ("LORA_PEERING_NAME", "Not_A_Name"), ("LORA_TRAINER_IMAGE_PULL_POLICY", "Sometimes"),
    ("LORA_GPU_TOLERATIONS", "dedicated=gpu"), ("LORA_GPU_TOLERATIONS", '[{"operator": "Equal"}]'),
    ("LORA_GPU_TOLERATIONS", '[{"key": "a", "effect": "Sometimes"}]'),
    ("LORA_GPU_RESOURCE", "gpus"),
])
def test_a_bad_value_names_its_variable(variable, value):
    with pytest.raises(ConfigError, match=f"^{variable}: .*{re.escape(value[:8])}") as caught:
        OperatorConfig.from_env({variable: value})
    assert caught.value.variable == variable


def test_the_operator_refuses_to_start_on_a_bad_value(monkeypatch, capsys):
    monkeypatch.setenv("LORA_LIST_CHUNK", "lots")
    monkeypatch.setattr(kopf, "run", lambda **kwargs: pytest.fail("kopf started"))
    assert cli.main(["run", "--standalone"]) == 2
    assert capsys.readouterr().err.startswith("lora-operator: LORA_LIST_CHUNK: ")


def test_the_peering_name_reaches_kopf(monkeypatch):
    seen = {}
    monkeypatch.setenv("LORA_PEERING_NAME", "lora-blue")
    monkeypatch.setattr(kopf, "run", lambda **kwargs: seen.update(kwargs))
    assert cli.main(["run"]) == 0
    assert seen["peering_name"] == "lora-blue"


def test_kopf_settings_come_from_the_configuration(monkeypatch):
    """The startup handler's settings (the controller it starts is left out: it needs a cluster)."""
    monkeypatch.setenv("LORA_LIST_CHUNK", "77")
    monkeypatch.setenv("LORA_PEERING_LIFETIME", "9")

    class Stop(Exception):
        pass

    def no_cluster(*_args):
        raise Stop

    monkeypatch.setattr(handlers.Kube, "connect", no_cluster)
    settings, memo = kopf.OperatorSettings(), kopf.Memo()
    with pytest.raises(Stop):
        asyncio.run(handlers.configure(settings=settings, memo=memo, pods_index=None, nodes_index=None))
    assert (settings.watching.chunk_size, settings.peering.lifetime) == (77, 9)
    assert memo.config.list_chunk == 77


def test_no_operator_module_reads_the_environment_past_the_configuration():
    readers = set()
    for path in OPERATOR.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                readers.add(path.relative_to(OPERATOR).as_posix())
    assert readers <= set(READS_ITS_OWN_ENV), sorted(readers - set(READS_ITS_OWN_ENV))


def test_every_variable_is_documented_in_the_contract():
    contracts = (OPERATOR.parents[1] / "docs" / "CONTRACTS.md").read_text()
    assert [v for v in ENV_VARS.values() if f"`{v}`" not in contracts] == []

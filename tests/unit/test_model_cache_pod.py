"""The node's model cache as the operator sets it up: the chart's values reach the trainer pod's
volume and environment, and what the trainer reports about the cache reaches the job's status."""

from __future__ import annotations

from pathlib import Path

from lora_operator.api import JobStatus, resolve_spec
from lora_operator.api.reports import Manifest, ModelFetch
from lora_operator.config import OperatorConfig
from lora_operator.render import build_trainer_pod
from lora_operator.results import Reports, apply_reports
from testground import chart
from testground.chart import operator_container, render

helm = chart.helm

SPEC = resolve_spec({"baseModel": {"family": "sdxl", "uri": "s3://models/sdxl"},
                     "dataset": {"uri": "s3://datasets/corgi/"}, "output": {"uri": "s3://loras/"}})


def trainer_pod(config: OperatorConfig) -> dict:
    return build_trainer_pod(job_name="corgi", namespace="team-a", job_uid="uid-1", spec=SPEC, node="gpu-1", gpus=8,
                             attempt=1, resume=False, config=config)


def cache_volume(pod: dict) -> dict:
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/cache")
    return next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])


def env_of(pod: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def test_by_default_each_pod_caches_in_an_emptydir():
    assert cache_volume(trainer_pod(OperatorConfig())) == {"name": "cache", "emptyDir": {}}


def test_a_host_path_makes_the_cache_the_nodes():
    pod = trainer_pod(OperatorConfig(model_cache_host_path="/var/lib/lora-cache", model_cache_budget_gib=50))
    assert cache_volume(pod) == {"name": "cache", "hostPath": {"path": "/var/lib/lora-cache", "type": "Directory"}}
    env = env_of(pod)
    assert env["LORA_CACHE_DIR"] == "/cache" and env["LORA_CACHE_BUDGET_BYTES"] == str(50 << 30)


def test_the_compile_caches_lie_in_the_cache_and_the_trainer_knows_its_node():
    env = env_of(trainer_pod(OperatorConfig()))
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith("/cache/") and env["TRITON_CACHE_DIR"].startswith("/cache/")
    assert env["LORA_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_chart_values_reach_the_cache_volume(helm: Path) -> None:
    def config(*sets: str) -> OperatorConfig:
        env = {e["name"]: e["value"] for e in operator_container(render(helm, *sets))["env"] if "value" in e}
        return OperatorConfig.from_env(env)

    assert cache_volume(trainer_pod(config())) == {"name": "cache", "emptyDir": {}}  # off by default
    pod = trainer_pod(config("trainer.modelCache.hostPath=/mnt/nvme/lora-cache", "trainer.modelCache.budgetGiB=900"))
    assert cache_volume(pod)["hostPath"]["path"] == "/mnt/nvme/lora-cache"
    assert env_of(pod)["LORA_CACHE_BUDGET_BYTES"] == str(900 << 30)


def test_what_the_trainer_fetched_reaches_the_status():
    fetched = [ModelFetch(uri="s3://models/sdxl", key="k1", hit=False, bytes=6_900_000_000, seconds=81.5)]
    status = apply_reports(JobStatus(), Reports(None, Manifest(node_name="gpu-1", models=fetched)), "s3://o/")
    assert status.models == fetched and status.cached_on == "gpu-1"
    assert status.to_resource()["models"][0] == {"uri": "s3://models/sdxl", "key": "k1", "hit": False,
                                                 "bytes": 6_900_000_000, "seconds": 81.5}
    assert apply_reports(JobStatus(), Reports(None, Manifest()), "s3://o/").models is None

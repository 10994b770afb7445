"""Chart values that reach the trainer pod through the operator: the chart renders the operator's
environment, `OperatorConfig` reads it as the operator does at start, and the operator's pod
renderer and scheduler use what it read."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from lora_operator.api import resolve_spec
from lora_operator.config import OperatorConfig
from lora_operator.render import build_trainer_pod
from lora_operator.scheduling import GpuNode, QueuedJob, Taint, fits
from testground import chart
from testground.chart import one, operator_container, render

helm = chart.helm  # the chart tests' fixture: the test ground's helm binary

SPEC = resolve_spec({"baseModel": {"family": "sdxl", "uri": "s3://models/sdxl"},
                     "dataset": {"uri": "s3://datasets/corgi/"}, "output": {"uri": "s3://loras/"}})


def operator_config(docs: list[dict]) -> OperatorConfig:
    """The configuration the operator builds from the Deployment's environment."""
    env = {e["name"]: e["value"] for e in operator_container(docs)["env"] if "value" in e}
    return OperatorConfig.from_env(env)


def trainer_pod(config: OperatorConfig, node_labels: dict[str, str] | None = None) -> dict:
    return build_trainer_pod(job_name="corgi", namespace="team-a", job_uid="uid-1", spec=SPEC, node="gpu-1", gpus=8,
                             attempt=1, resume=False, config=config, node_labels=node_labels)


def trainer_env(pod: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}


def test_the_gpu_toleration_reaches_the_trainer_pod_and_the_scheduler(helm: Path) -> None:
    docs = render(helm, "gpu.toleration.enabled=true", "gpu.toleration.key=team", "gpu.toleration.value=ml",
                  "gpu.toleration.effect=NoExecute")
    config = operator_config(docs)
    tolerations = trainer_pod(config)["spec"]["tolerations"]
    assert {"key": "team", "operator": "Equal", "value": "ml", "effect": "NoExecute"} in tolerations
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    # The scheduler admits to a node tainted that way, as the kubelet will run the pod there.
    node = GpuNode(name="gpu-1", ready=True, schedulable=True, gpus=8,
                   taints=(Taint(key="team", value="ml", effect="NoExecute"),))
    job = QueuedJob(uid="uid-1", namespace="team-a", name="corgi", priority=0, created=datetime.now(UTC))
    assert fits(job, node, gpu_type_label=config.gpu_type_label, always_tolerated=config.trainer_tolerations)
    default = operator_config(render(helm))
    assert not fits(job, node, gpu_type_label=default.gpu_type_label, always_tolerated=default.trainer_tolerations)
    assert trainer_pod(default)["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_an_exists_toleration_carries_no_value(helm: Path) -> None:
    config = operator_config(render(helm, "gpu.toleration.enabled=true", "gpu.toleration.operator=Exists"))
    tolerations = trainer_pod(config)["spec"]["tolerations"]
    assert {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_the_trainer_pull_policy_reaches_the_trainer_pod(helm: Path) -> None:
    config = operator_config(render(helm, "trainer.image.pullPolicy=Always"))
    assert trainer_pod(config)["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    default = operator_config(render(helm))
    assert trainer_pod(default)["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_the_operator_joins_the_peering_object_the_chart_creates(helm: Path) -> None:
    docs = render(helm, "operator.peeringName=lora-blue")
    assert operator_config(docs).peering_name == one(docs, "ClusterKopfPeering")["metadata"]["name"] == "lora-blue"
    docs = render(helm, "operator.peeringName=lora-blue", "operator.watchNamespace=team-a")
    assert operator_config(docs).peering_name == one(docs, "KopfPeering")["metadata"]["name"] == "lora-blue"
    assert operator_config(render(helm)).peering_name == "lora-operator"



def test_the_gpu_memory_label_the_chart_names_is_read_from_the_node(helm: Path) -> None:
    labels = {"nvidia.com/gpu.memory": "81559", "example.com/gpu-mib": "24576"}
    assert trainer_env(trainer_pod(operator_config(render(helm)), labels))["LORA_GPU_MEMORY_MIB"] == "81559"
    config = operator_config(render(helm, "gpu.memoryLabelKey=example.com/gpu-mib"))
    assert trainer_env(trainer_pod(config, labels))["LORA_GPU_MEMORY_MIB"] == "24576"
    assert "LORA_GPU_MEMORY_MIB" not in trainer_env(trainer_pod(config, {"nvidia.com/gpu.memory": "81559"}))

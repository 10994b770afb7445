"""The trainer pod's size, /dev/shm, pull secrets, priority class and annotations: the platform's
settings (chart values, ClusterLoraTrainingTemplates) reach the pod; a job or a namespaced template
cannot name them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from lora_operator.api import ClusterLoraTrainingTemplate, JobSpec, LoraTrainingTemplate, SpecError, resolve_spec
from lora_operator.api.resolve import template_pod
from lora_operator.config import ConfigError, OperatorConfig
from lora_operator.render import build_trainer_pod
from testground import chart
from testground.chart import operator_container, render

helm = chart.helm

SPEC = resolve_spec({"baseModel": {"family": "sdxl", "uri": "s3://models/sdxl"},
                     "dataset": {"uri": "s3://datasets/corgi/"}, "output": {"uri": "s3://loras/"}})
SIZED = {"limits": {"cpu": "8", "memory": "64Gi", "ephemeralStorage": "100Gi"}, "shmSize": "16Gi",
         "imagePullSecrets": ["registry-keys"], "priorityClassName": "lora-training",
         "annotations": {"example.com/team-cost": "ml"}}


def cluster_template(pod: dict | None) -> dict:
    spec = {"description": "sized", **({"pod": pod} if pod is not None else {})}
    return {"apiVersion": "lora-operator.io/v1alpha1", "kind": "ClusterLoraTrainingTemplate",
            "metadata": {"name": "sized"}, "spec": spec}


def trainer_pod(config: OperatorConfig, template: dict | None = None) -> dict:
    return build_trainer_pod(job_name="corgi", namespace="team-a", job_uid="uid-1", spec=SPEC, node="gpu-1", gpus=8,
                             attempt=1, resume=False, config=config, template_pod=template_pod(template))


def container(pod: dict) -> dict:
    return pod["spec"]["containers"][0]


def shm(pod: dict) -> dict:
    return next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")["emptyDir"]


def test_limits_alone_are_also_the_requests_so_the_pod_is_guaranteed():
    pod = trainer_pod(OperatorConfig.from_env({"LORA_TRAINER_POD": '{"limits": {"cpu": "8", "memory": "64Gi"}}'}))
    resources = container(pod)["resources"]
    assert resources["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "8"}
    assert resources["requests"] == resources["limits"]


def test_a_request_below_its_limit_stays():
    config = OperatorConfig.from_env({"LORA_TRAINER_POD": '{"limits": {"cpu": "8", "memory": "64Gi"}, '
                                                          '"requests": {"cpu": "2"}}'})
    resources = container(trainer_pod(config))["resources"]
    assert resources["requests"] == {"cpu": "2", "memory": "64Gi", "nvidia.com/gpu": "8"}


def test_every_setting_of_the_configuration_reaches_the_pod():
    import json

    pod = trainer_pod(OperatorConfig.from_env({"LORA_TRAINER_POD": json.dumps(SIZED)}))
    assert container(pod)["resources"]["limits"]["ephemeral-storage"] == "100Gi"
    assert shm(pod) == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-keys"}]
    assert pod["spec"]["priorityClassName"] == "lora-training"
    assert pod["metadata"]["annotations"] == {"example.com/team-cost": "ml"}


def test_nothing_configured_gives_only_gpus_and_a_bounded_shm():
    pod = trainer_pod(OperatorConfig())
    assert container(pod)["resources"] == {"limits": {"nvidia.com/gpu": "8"}, "requests": {"nvidia.com/gpu": "8"}}
    assert shm(pod) == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert "imagePullSecrets" not in pod["spec"] and "priorityClassName" not in pod["spec"]
    assert "annotations" not in pod["metadata"]


def test_a_cluster_template_overrides_the_configuration_field_by_field():
    config = OperatorConfig(trainer_pod={"limits": {"cpu": "8", "memory": "64Gi"}, "annotations": {"a.io/x": "1"},
                                         "priorityClassName": "default-training"})
    pod = trainer_pod(config, cluster_template({"limits": {"memory": "200Gi"}, "annotations": {"b.io/y": "2"}}))
    assert container(pod)["resources"]["limits"] == {"cpu": "8", "memory": "200Gi", "nvidia.com/gpu": "8"}
    assert pod["metadata"]["annotations"] == {"a.io/x": "1", "b.io/y": "2"}
    assert pod["spec"]["priorityClassName"] == "default-training"
    assert trainer_pod(config, cluster_template(None)) == trainer_pod(config)


def test_a_namespaced_template_or_a_job_cannot_size_or_annotate_the_pod():
    namespaced = {**cluster_template(SIZED), "kind": "LoraTrainingTemplate"}
    assert template_pod(namespaced) is None
    with pytest.raises(ValidationError, match="pod"):
        LoraTrainingTemplate.model_validate({**namespaced, "metadata": {"name": "x", "namespace": "team-a"}})
    ClusterLoraTrainingTemplate.model_validate(cluster_template(SIZED))
    with pytest.raises(ValidationError, match="pod"):
        JobSpec.model_validate({**SPEC.to_resource(), "pod": SIZED})
    # the cluster template's pod settings are no job defaults: resolving ignores them
    job = {"baseModel": {"family": "sdxl", "uri": "s3://models/sdxl"}, "dataset": {"uri": "s3://d/"},
           "output": {"uri": "s3://loras/"}}
    assert resolve_spec(job, cluster_template(SIZED)["spec"]) == resolve_spec(job)


def test_no_volume_source_can_be_named_even_by_the_platform():
    with pytest.raises(ValidationError, match="volumes"):
        ClusterLoraTrainingTemplate.model_validate(cluster_template({"volumes": [{"hostPath": {"path": "/"}}]}))


def test_bad_settings_are_refused_naming_the_field():
    with pytest.raises(SpecError, match=r"spec.template: ClusterLoraTrainingTemplate 'sized' spec.pod.limits.cpu"):
        template_pod(cluster_template({"limits": {"cpu": "eight"}}))
    with pytest.raises(SpecError, match=r"requests.memory \(100Gi\) must not exceed limits.memory \(64Gi\)"):
        template_pod(cluster_template({"limits": {"memory": "64Gi"}, "requests": {"memory": "100Gi"}}))
    # a request over the operator's limit is refused with the template, not when the pod is made
    base = OperatorConfig(trainer_pod={"limits": {"cpu": "8"}}).trainer_pod
    with pytest.raises(SpecError, match=r"requests.cpu \(10\) must not exceed limits.cpu \(8\)"):
        template_pod(cluster_template({"requests": {"cpu": "10"}}), base)
    assert template_pod(cluster_template({"limits": {"cpu": "2", "memory": "1Gi"},
                                          "requests": {"cpu": "1500m", "memory": "1000Mi"}})) is not None
    with pytest.raises(ConfigError, match="LORA_TRAINER_POD"):
        OperatorConfig.from_env({"LORA_TRAINER_POD": '{"shmSize": "lots"}'})
    with pytest.raises(ConfigError, match="LORA_TRAINER_POD: .*not a JSON object"):
        OperatorConfig.from_env({"LORA_TRAINER_POD": "{limits"})


def test_the_chart_defaults_give_guaranteed_pods(helm: Path) -> None:
    env = {e["name"]: e["value"] for e in operator_container(render(helm))["env"] if "value" in e}
    resources = container(trainer_pod(OperatorConfig.from_env(env)))["resources"]
    assert resources["requests"] == resources["limits"]
    assert {"cpu", "memory"} <= set(resources["limits"])


def test_chart_values_reach_the_trainer_pod(helm: Path) -> None:
    docs = render(helm, "trainer.pod.limits.cpu=16", "trainer.pod.limits.memory=128Gi",
                  "trainer.pod.requests.cpu=4", "trainer.pod.shmSize=32Gi",
                  "trainer.pod.imagePullSecrets={registry-keys}", "trainer.pod.priorityClassName=lora-training",
                  "trainer.pod.annotations.example\\.com/team=ml")
    env = {e["name"]: e["value"] for e in operator_container(docs)["env"] if "value" in e}
    pod = trainer_pod(OperatorConfig.from_env(env))
    assert container(pod)["resources"]["limits"] == {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "8"}
    assert container(pod)["resources"]["requests"] == {"cpu": "4", "memory": "128Gi", "nvidia.com/gpu": "8"}
    assert shm(pod)["sizeLimit"] == "32Gi"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-keys"}]
    assert pod["spec"]["priorityClassName"] == "lora-training"
    assert pod["metadata"]["annotations"] == {"example.com/team": "ml"}

"""The trainer pod manifest: security, placement, env and names."""

from __future__ import annotations

import pytest

from lora_operator.api import JobSpec, resolve_spec
from lora_operator.api.contract import job_label_value, output_prefix, trainer_selector
from lora_operator.config import ConfigError, OperatorConfig
from lora_operator.render import build_trainer_pod, pod_name

CONFIG = OperatorConfig(trainer_image="trainer:1", storage_endpoint="minio:9000", storage_secret="default-creds")


def spec(**extra) -> JobSpec:
    base = {
        "baseModel": {"family": "sdxl", "uri": "s3://models/sdxl"},
        "dataset": {"uri": "s3://datasets/corgi/"},
        "output": {"uri": "s3://loras/team-a/"},
    }
    return resolve_spec({**base, **extra})


def pod(job_name="corgi", attempt=1, resume=False, job_spec=None, config=CONFIG, gpus=8, node_labels=None) -> dict:
    return build_trainer_pod(
        job_name=job_name,
        namespace="team-a",
        job_uid="uid-1",
        spec=job_spec or spec(),
        node="gpu-node-1",
        gpus=gpus,
        attempt=attempt,
        resume=resume,
        config=config,
        node_labels=node_labels,
    )


def env_of(manifest) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in manifest["spec"]["containers"][0]["env"]}


def test_pod_has_no_kubernetes_credentials_and_runs_as_non_root():
    p = pod()["spec"]
    container = p["containers"][0]
    assert p["automountServiceAccountToken"] is False
    assert p["serviceAccountName"] == "lora-trainer"
    assert p["restartPolicy"] == "Never"
    assert p["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_writable_paths_are_empty_dirs_and_shm_is_in_memory():
    p = pod()["spec"]
    mounts = {m["mountPath"]: m["name"] for m in p["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in p["volumes"]}
    assert set(mounts) == {"/tmp", "/cache", "/dev/shm"}
    assert all("emptyDir" in volumes[name] for name in mounts.values())
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


def test_pod_takes_the_whole_node_and_no_other_trainer_shares_it():
    p = pod(gpus=4)["spec"]
    terms = p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-node-1"]}]}]
    (anti,) = p["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["labelSelector"] == {"matchLabels": {"app.kubernetes.io/component": "trainer"}}
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert anti["namespaceSelector"] == {}, "must see trainers of every namespace"
    resources = p["containers"][0]["resources"]
    assert resources == {"limits": {"nvidia.com/gpu": "4"}, "requests": {"nvidia.com/gpu": "4"}}


def test_custom_gpu_resource_is_used_for_limits_and_toleration():
    config = CONFIG.model_copy(update={"gpu_resource": "amd.com/gpu"})
    p = pod(config=config)["spec"]
    assert p["containers"][0]["resources"]["limits"] == {"amd.com/gpu": "8"}
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in p["tolerations"]


def test_tolerations_come_from_placement_plus_the_gpu_one():
    s = spec(placement={"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml"}]})
    tolerations = pod(job_spec=s)["spec"]["tolerations"]
    assert tolerations == [
        {"key": "dedicated", "operator": "Equal", "value": "ml"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]


def test_labels_and_owner_reference():
    meta = pod(attempt=3)["metadata"]
    assert meta["name"] == "corgi-a3"
    assert meta["labels"]["app.kubernetes.io/name"] == "lora-operator"
    assert meta["labels"]["app.kubernetes.io/component"] == "trainer"
    assert meta["labels"]["lora-operator.io/job"] == "corgi"
    assert meta["labels"]["lora-operator.io/job-uid"] == "uid-1"
    assert meta["labels"]["lora-operator.io/attempt"] == "3"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "lora-operator.io/v1alpha1",
            "kind": "LoraTrainingJob",
            "name": "corgi",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_env_carries_the_resolved_spec_that_round_trips():
    s = spec(priority=5, training={"epochs": 3})
    env = env_of(pod(job_spec=s, attempt=2, resume=True))
    assert JobSpec.model_validate_json(env["LORA_JOB_SPEC"]) == s
    assert env["LORA_JOB_NAME"] == "corgi"
    assert env["LORA_JOB_NAMESPACE"] == "team-a"
    assert env["LORA_ATTEMPT"] == "2"
    assert env["LORA_RESUME"] == "1"
    assert env["LORA_JOB_UID"] == "uid-1"
    assert env["LORA_OUTPUT_PREFIX"] == "s3://loras/team-a/team-a/corgi/uid-1/"
    assert env["LORA_CACHE_DIR"] == "/cache"
    assert env["S3_ENDPOINT"] == "minio:9000"
    assert env["S3_SECURE"] == "false"
    assert env_of(pod())["LORA_RESUME"] == "0"


def test_the_nodes_gpu_memory_label_reaches_the_trainer_and_only_a_valid_one():
    labels = {"nvidia.com/gpu.memory": "81559", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert env_of(pod(node_labels=labels))["LORA_GPU_MEMORY_MIB"] == "81559"
    for without in (None, {}, {"nvidia.com/gpu.product": "NVIDIA-H100"}, {"nvidia.com/gpu.memory": "80Gi"},
                    {"nvidia.com/gpu.memory": "0"}, {"nvidia.com/gpu.memory": "\u0663"}):  # Arabic-Indic 3
        assert "LORA_GPU_MEMORY_MIB" not in env_of(pod(node_labels=without)), without
    # The label's name is the platform's setting (LORA_GPU_MEMORY_LABEL); the default label is then not read.
    own = CONFIG.model_copy(update={"gpu_memory_label": "example.com/gpu-mib"})
    assert env_of(pod(config=own, node_labels={"example.com/gpu-mib": "24576"}))["LORA_GPU_MEMORY_MIB"] == "24576"
    assert "LORA_GPU_MEMORY_MIB" not in env_of(pod(config=own, node_labels=labels))


def test_storage_credentials_come_only_from_the_referenced_secret():
    config = CONFIG.model_copy(update={"storage_allowed_endpoints": ("s3:443",)})
    env = env_of(pod(job_spec=spec(storage={"secretRef": "team-creds", "endpoint": "S3:443", "secure": True}),
                     config=config))
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "team-creds", "key": "accessKey"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "team-creds", "key": "secretKey"}}
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "team-creds", "key": "hfToken", "optional": True}}
    assert env["S3_ENDPOINT"] == "s3:443"
    assert env["S3_SECURE"] == "true"


def test_a_pod_is_never_rendered_for_an_endpoint_the_platform_does_not_allow():
    with pytest.raises(ValueError, match="spec.storage.endpoint: 'evil:9000' is not .* allowed: minio:9000"):
        pod(job_spec=spec(storage={"endpoint": "evil:9000"}))


def test_default_secret_is_used_when_the_job_names_none():
    env = env_of(pod())
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "default-creds"


def test_image_and_command():
    container = pod(job_spec=spec(placement={"image": "custom:2"}))["spec"]["containers"][0]
    assert container["image"] == "custom:2"
    assert container["command"] == ["lora-train"]
    assert container["args"] == ["run", "--spec-env", "LORA_JOB_SPEC"]
    assert pod()["spec"]["containers"][0]["image"] == "trainer:1"


@pytest.mark.parametrize("length", [55, 60, 61, 63, 200, 253])
def test_long_job_names_give_valid_pod_names_and_labels(length):
    name = ("a-" * 200)[:length].rstrip("-") + "z"
    manifest = pod(job_name=name, attempt=12)
    pod_name_ = manifest["metadata"]["name"]
    assert len(pod_name_) <= 63
    assert pod_name_.endswith("-a12")
    assert "--" not in pod_name_.replace("-a12", "")[-12:]
    assert len(manifest["metadata"]["labels"]["lora-operator.io/job"]) <= 63


def test_pod_names_of_different_long_jobs_differ():
    base = "x" * 70
    assert pod_name(base + "1", 1) != pod_name(base + "2", 1)


def test_job_label_value_is_the_name_or_a_stable_hash():
    assert job_label_value("corgi") == "corgi"
    long = "j" * 64
    assert job_label_value(long) == job_label_value(long) != long
    assert len(job_label_value(long)) <= 63


def test_trainer_selector():
    assert trainer_selector() == "app.kubernetes.io/name=lora-operator,app.kubernetes.io/component=trainer"
    assert trainer_selector("u1").endswith(",lora-operator.io/job-uid=u1")


def test_output_prefix_is_the_jobs_own_by_uid_and_always_ends_with_one_slash():
    uid = "0b5e2f1c-7a7d-4c3e-9d0e-2f6a1b9c8d7e"
    assert output_prefix(spec(output={"uri": "s3://b/p"}), "ns", "j", uid) == f"s3://b/p/ns/j/{uid}/"
    assert output_prefix(spec(output={"uri": "file:///data/"}), "ns", "j", uid) == f"file:///data/ns/j/{uid}/"
    with pytest.raises(ValueError, match="spec.output"):
        output_prefix(JobSpec(), "ns", "j", uid)
    for bad in ("", "../x", "a/b", "."):
        with pytest.raises(ValueError, match="metadata.uid"):
            output_prefix(spec(), "ns", "j", bad)


# The configuration the renderer reads (config.py has no test module of its own yet).


def test_config_from_env_reads_every_variable_and_defaults_the_rest():
    config = OperatorConfig.from_env(
        {
            "LORA_TRAINER_IMAGE": "reg/trainer:2",
            "LORA_STORAGE_SECURE": "true",
            "LORA_METRICS_PORT": "9090",
            "LORA_UNSCHEDULABLE_TIMEOUT": "60",
            "LORA_WATCH_NAMESPACE": "",
        }
    )
    assert (config.trainer_image, config.storage_secure, config.metrics_port) == ("reg/trainer:2", True, 9090)
    assert config.unschedulable_timeout == 60
    assert (config.gpu_resource, config.gpu_type_label) == ("nvidia.com/gpu", "lora-operator.io/gpu-type")
    assert config.gpu_memory_label == "nvidia.com/gpu.memory"
    assert OperatorConfig.from_env({"LORA_GPU_MEMORY_LABEL": "example.com/gpu-mib"}).gpu_memory_label == \
        "example.com/gpu-mib"
    assert (config.trainer_service_account, config.watch_namespace) == ("lora-trainer", "")


def test_config_error_names_the_variable():
    with pytest.raises(ConfigError, match="^LORA_METRICS_PORT: .*'http'") as err:
        OperatorConfig.from_env({"LORA_METRICS_PORT": "http"})
    assert err.value.variable == "LORA_METRICS_PORT"
    with pytest.raises(ConfigError, match="^LORA_STORAGE_SECURE"):
        OperatorConfig.from_env({"LORA_STORAGE_SECURE": "maybe"})
    with pytest.raises(ConfigError, match="^LORA_PROGRESS_INTERVAL"):
        OperatorConfig.from_env({"LORA_PROGRESS_INTERVAL": "-1"})


def test_config_is_frozen_and_holds_no_storage_key_of_its_own():
    config = OperatorConfig.from_env({"LORA_STORAGE_SECRET_KEY": "s3cr3t", "LORA_STORAGE_ACCESS_KEY": "k"})
    assert "s3cr3t" not in repr(config) and not any("key" in name for name in OperatorConfig.model_fields)
    with pytest.raises(ValueError):
        config.metrics_port = 1


def test_namespace_node_limits_are_a_json_object_of_namespaces_to_counts():
    config = OperatorConfig.from_env({"LORA_NAMESPACE_NODE_LIMITS": '{"team-a": 4, "*": 2}'})
    assert config.namespace_node_limits == {"team-a": 4, "*": 2}
    assert OperatorConfig.from_env({}).namespace_node_limits == {}
    for bad, why in (("team-a=4", "not a JSON object"), ('{"team-a": -1}', "greater than or equal to 0"),
                     ('{"Team_A": 1}', "should match pattern"), ('["team-a"]', "valid dictionary")):
        with pytest.raises(ConfigError, match=f"^LORA_NAMESPACE_NODE_LIMITS: .*{why}"):
            OperatorConfig.from_env({"LORA_NAMESPACE_NODE_LIMITS": bad})

"""The trainer pod of one attempt, as a manifest dict (docs/CONTRACTS.md, "The trainer pod").

Pure: a resolved JobSpec and the scheduling decision in, a Pod dict out. The k8s adapter
creates it as is. The pod has no Kubernetes credentials, runs as uid 1000 on a read-only
root filesystem, takes the whole node it was admitted to and refuses to share it with any
other trainer, in any namespace.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .api import API_VERSION, JobSpec, LoraTrainingJob, PodSettings
from .api.contract import (
    COMPONENT,
    ENV_ACCESS_KEY,
    ENV_HF_TOKEN,
    ENV_JOB_SPEC,
    ENV_NODE_NAME,
    ENV_S3_ENDPOINT,
    ENV_S3_SECURE,
    ENV_SECRET_KEY,
    LABEL_COMPONENT,
    TrainerEnv,
    output_prefix,
    trainer_labels,
)
from .api.pod import DEFAULT_SHM_SIZE
from .api.status import Progress
from .config import OperatorConfig
from .grace import termination_grace
from .policy import job_target
from .scheduling import Toleration

CONTAINER = "trainer"
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
CACHE_DIR = "/cache"
TRAINER_UID = 1000
MAX_NAME = 63
"""Pod names stay within a hostname's 63 characters: the kubelet makes the pod's hostname from its name."""


def pod_name(job_name: str, attempt: int) -> str:
    """``<job>-a<attempt>``; a name too long for 63 characters is cut and given a hash suffix."""
    suffix = f"-a{attempt}"
    name = job_name + suffix
    if len(name) <= MAX_NAME:
        return name
    tail = f"-{hashlib.sha256(job_name.encode()).hexdigest()[:8]}{suffix}"
    return job_name[: MAX_NAME - len(tail)].rstrip("-.") + tail


def build_trainer_pod(
    *,
    job_name: str,
    namespace: str,
    job_uid: str,
    spec: JobSpec,
    node: str,
    gpus: int,
    attempt: int,
    resume: bool,
    config: OperatorConfig,
    template_pod: PodSettings | None = None,
    progress: Progress | None = None,
    node_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Pod manifest of one attempt of a job.

    Args:
        job_name: metadata.name of the LoraTrainingJob.
        namespace: Its namespace (the pod's too).
        job_uid: Its metadata.uid, for the owner reference and labels.
        spec: The resolved spec (template and defaults applied).
        node: The GPU node the scheduler chose.
        gpus: All of that node's allocatable GPUs.
        attempt: Attempt number, from 1.
        resume: Whether the trainer resumes from the saved state (a retry).
        config: The operator configuration.
        template_pod: The pod settings of the job's ClusterLoraTrainingTemplate, over the
            configuration's (status.trainerPod).
        progress: The job's status.progress: the measured save time sets the grace period (`grace`).
        node_labels: The labels of `node`: its GPU memory label (`node_gpu_memory`) reaches the trainer.
    """
    pod = template_pod.over(config.trainer_pod) if template_pod else config.trainer_pod
    placement = spec.placement
    tolerations = [t.to_resource() for t in placement.tolerations] if placement else []
    tolerations += [_toleration(t) for t in config.trainer_tolerations]
    metadata: dict[str, Any] = {
        "name": pod_name(job_name, attempt),
        "namespace": namespace,
        "labels": trainer_labels(job_name, job_uid, attempt),
        "ownerReferences": [_owner_reference(job_name, job_uid)],
    }
    if pod.annotations:
        metadata["annotations"] = dict(pod.annotations)
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "serviceAccountName": config.trainer_service_account,
            "enableServiceLinks": False,
            # On SIGTERM the trainer saves its resume state and exits: this is its time to do so.
            "terminationGracePeriodSeconds": termination_grace(config, progress),
            "affinity": _affinity(node),
            "tolerations": tolerations,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": TRAINER_UID,
                "runAsGroup": TRAINER_UID,
                "fsGroup": TRAINER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [_container(job_name, namespace, job_uid, spec, gpus, attempt, resume, config, pod,
                                      node_gpu_memory(node_labels or {}, config.gpu_memory_label))],
            "volumes": [
                {"name": "tmp", "emptyDir": {}},
                _cache_volume(config),
                # tmpfs, so data-loader workers share tensors in memory; bounded, since it counts
                # against the memory limit and an unbounded one could take the node's memory
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": pod.shm_size or DEFAULT_SHM_SIZE}},
            ],
        },
    }
    if pod.image_pull_secrets:
        manifest["spec"]["imagePullSecrets"] = [{"name": name} for name in pod.image_pull_secrets]
    if pod.priority_class_name:
        manifest["spec"]["priorityClassName"] = pod.priority_class_name
    return manifest


def node_gpu_memory(labels: Mapping[str, str], label: str) -> int | None:
    """MiB of one of the node's GPUs, from its `label` (LORA_GPU_MEMORY_LABEL); None without the label or
    with a value that is not a positive whole number: the trainer then asks the GPU itself."""
    value = labels.get(label, "")
    return int(value) if value.isascii() and value.isdigit() and int(value) > 0 else None


def _cache_volume(config: OperatorConfig) -> dict[str, Any]:
    # The node's cache outlives the pod only as a hostPath; type Directory, so a node without the
    # prepared (uid-1000-writable) folder fails the pod visibly rather than creating a root-owned one.
    if config.model_cache_host_path:
        return {"name": "cache", "hostPath": {"path": config.model_cache_host_path, "type": "Directory"}}
    return {"name": "cache", "emptyDir": {}}


def _toleration(toleration: Toleration) -> dict[str, str]:
    fields = {"key": toleration.key, "operator": toleration.operator, "value": toleration.value,
              "effect": toleration.effect}
    return {name: value for name, value in fields.items() if value}


def _owner_reference(job_name: str, job_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": LoraTrainingJob.KIND,
        "name": job_name,
        "uid": job_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _affinity(node: str) -> dict[str, Any]:
    # The anti-affinity names every namespace (namespaceSelector {}): without it the term
    # only sees trainer pods of the pod's own namespace.
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]
            }
        },
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {LABEL_COMPONENT: COMPONENT}},
                    "namespaceSelector": {},
                    "topologyKey": HOSTNAME_TOPOLOGY,
                }
            ]
        },
    }


def _container(
    job_name: str,
    namespace: str,
    job_uid: str,
    spec: JobSpec,
    gpus: int,
    attempt: int,
    resume: bool,
    config: OperatorConfig,
    pod: PodSettings,
    gpu_memory_mib: int | None,
) -> dict[str, Any]:
    image = (spec.placement.image if spec.placement else None) or config.trainer_image
    return {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": config.trainer_image_pull_policy,
        "command": ["lora-train"],
        "args": ["run", "--spec-env", ENV_JOB_SPEC],
        "env": _env(job_name, namespace, job_uid, spec, attempt, resume, config, gpu_memory_mib),
        "resources": pod.resources(config.gpu_resource, gpus),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _env(
    job_name: str, namespace: str, job_uid: str, spec: JobSpec, attempt: int, resume: bool, config: OperatorConfig,
    gpu_memory_mib: int | None,
) -> list[dict[str, Any]]:
    storage = spec.storage
    secret = (storage.secret_ref if storage else None) or config.storage_secret
    where = job_target(spec, config)  # resolve refused a job whose endpoint is not allowed; this checks again
    job = TrainerEnv(job_name=job_name, job_namespace=namespace, job_uid=job_uid, attempt=attempt, resume=resume,
                     output_prefix=output_prefix(spec, namespace, job_name, job_uid), cache_dir=CACHE_DIR,
                     cache_budget_bytes=config.model_cache_budget_gib << 30, gpu_memory_mib=gpu_memory_mib)
    values = {
        ENV_JOB_SPEC: json.dumps(spec.to_resource(), sort_keys=True, separators=(",", ":")),
        **job.to_env(),
        ENV_S3_ENDPOINT: where.address,
        ENV_S3_SECURE: "true" if where.secure else "false",
        # The root filesystem is read-only: libraries that write under $HOME get /tmp, and
        # Hugging Face downloads land in the node-local cache.
        "HOME": "/tmp",
        "HF_HOME": f"{CACHE_DIR}/huggingface",
        # torch.compile's caches beside the models: a retry on the node skips recompiling
        "TORCHINDUCTOR_CACHE_DIR": f"{CACHE_DIR}/torch-compile/inductor",
        "TRITON_CACHE_DIR": f"{CACHE_DIR}/torch-compile/triton",
        "PYTHONUNBUFFERED": "1",
    }
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items()]
    env += [
        {"name": ENV_NODE_NAME, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        _secret_env(ENV_ACCESS_KEY, secret, "accessKey"),
        _secret_env(ENV_SECRET_KEY, secret, "secretKey"),
        _secret_env(ENV_HF_TOKEN, secret, "hfToken", optional=True),
    ]
    return env


def _secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}

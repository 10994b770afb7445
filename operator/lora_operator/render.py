"""The trainer pod of one attempt, as a manifest dict (docs/CONTRACTS.md, "The trainer pod").

Pure: a resolved JobSpec and the scheduling decision in, a Pod dict out. The k8s adapter
creates it as is. The pod has no Kubernetes credentials, runs as uid 1000 on a read-only
root filesystem, takes the whole node it was admitted to and refuses to share it with any
other trainer, in any namespace.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from .api import API_VERSION, JobSpec, LoraTrainingJob
from .config import OperatorConfig
from .endpoints import job_target
from .scheduling.fit import resource_toleration

APP_NAME = "lora-operator"
COMPONENT = "trainer"
CONTAINER = "trainer"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB = "lora-operator.io/job"
LABEL_JOB_UID = "lora-operator.io/job-uid"
LABEL_ATTEMPT = "lora-operator.io/attempt"
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
CACHE_DIR = "/cache"
SPEC_ENV = "LORA_JOB_SPEC"
TRAINER_UID = 1000
MAX_NAME = 63
UID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,127}")
"""A metadata.uid (the API server makes UUIDs; the pattern only keeps separators out of the path)."""


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def job_label_value(name: str) -> str:
    """The value of the ``lora-operator.io/job`` label: the name, or a hash when it is too long."""
    return name if len(name) <= MAX_NAME else _digest(name, 32)


def pod_name(job_name: str, attempt: int) -> str:
    """``<job>-a<attempt>``; a name too long for 63 characters is cut and given a hash suffix."""
    suffix = f"-a{attempt}"
    name = job_name + suffix
    if len(name) <= MAX_NAME:
        return name
    tail = f"-{_digest(job_name, 8)}{suffix}"
    return job_name[: MAX_NAME - len(tail)].rstrip("-.") + tail


def trainer_labels(job_name: str, job_uid: str, attempt: int) -> dict[str, str]:
    """The labels of a trainer pod (selectable with `trainer_selector`)."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_COMPONENT: COMPONENT,
        LABEL_MANAGED_BY: APP_NAME,
        LABEL_JOB: job_label_value(job_name),
        LABEL_JOB_UID: job_uid,
        LABEL_ATTEMPT: str(attempt),
    }


def trainer_selector(job_uid: str | None = None) -> str:
    """Label selector of all trainer pods, or of one job's pods when `job_uid` is given."""
    selector = f"{LABEL_NAME}={APP_NAME},{LABEL_COMPONENT}={COMPONENT}"
    return f"{selector},{LABEL_JOB_UID}={job_uid}" if job_uid else selector


def output_prefix(spec: JobSpec, namespace: str, name: str, uid: str) -> str:
    """``<output.uri>/<namespace>/<job>/<job UID>/``, always ending with ``/``.

    The UID makes the prefix the job's alone: a job deleted and created again with the same name
    is another object with another UID, and never sees (resumes from, reports or finalizes) the
    files of the old run. The name stays in the path so people find a job's runs by name.

    Raises:
        ValueError: The spec has no output (it was not resolved), or the UID is not one.
    """
    if spec.output is None:
        raise ValueError("spec.output: required (resolve the spec first)")
    if not UID.fullmatch(uid):
        raise ValueError(f"metadata.uid: {uid!r} is not a Kubernetes UID")
    return f"{spec.output.uri.rstrip('/')}/{namespace}/{name}/{uid}/"


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
    """
    placement = spec.placement
    tolerations = [t.to_resource() for t in placement.tolerations] if placement else []
    gpu_tol = resource_toleration(config.gpu_resource)
    tolerations.append({"key": gpu_tol.key, "operator": gpu_tol.operator, "effect": gpu_tol.effect})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(job_name, attempt),
            "namespace": namespace,
            "labels": trainer_labels(job_name, job_uid, attempt),
            "ownerReferences": [_owner_reference(job_name, job_uid)],
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "serviceAccountName": config.trainer_service_account,
            "enableServiceLinks": False,
            "affinity": _affinity(node),
            "tolerations": tolerations,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": TRAINER_UID,
                "runAsGroup": TRAINER_UID,
                "fsGroup": TRAINER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [_container(job_name, namespace, job_uid, spec, gpus, attempt, resume, config)],
            "volumes": [
                {"name": "tmp", "emptyDir": {}},
                {"name": "cache", "emptyDir": {}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
        },
    }


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
) -> dict[str, Any]:
    image = (spec.placement.image if spec.placement else None) or config.trainer_image
    return {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["lora-train"],
        "args": ["run", "--spec-env", SPEC_ENV],
        "env": _env(job_name, namespace, job_uid, spec, attempt, resume, config),
        "resources": {
            "limits": {config.gpu_resource: str(gpus)},
            "requests": {config.gpu_resource: str(gpus)},
        },
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
    job_name: str, namespace: str, job_uid: str, spec: JobSpec, attempt: int, resume: bool, config: OperatorConfig
) -> list[dict[str, Any]]:
    storage = spec.storage
    secret = (storage.secret_ref if storage else None) or config.storage_secret
    where = job_target(spec, config)  # resolve refused a job whose endpoint is not allowed; this checks again
    values = {
        SPEC_ENV: json.dumps(spec.to_resource(), sort_keys=True, separators=(",", ":")),
        "LORA_JOB_NAME": job_name,
        "LORA_JOB_NAMESPACE": namespace,
        "LORA_JOB_UID": job_uid,
        "LORA_ATTEMPT": str(attempt),
        "LORA_RESUME": "1" if resume else "0",
        "LORA_OUTPUT_PREFIX": output_prefix(spec, namespace, job_name, job_uid),
        "LORA_CACHE_DIR": CACHE_DIR,
        "S3_ENDPOINT": where.address,
        "S3_SECURE": "true" if where.secure else "false",
        # The root filesystem is read-only: libraries that write under $HOME get /tmp, and
        # Hugging Face downloads land in the node-local cache.
        "HOME": "/tmp",
        "HF_HOME": f"{CACHE_DIR}/huggingface",
        "PYTHONUNBUFFERED": "1",
    }
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items()]
    env += [
        _secret_env("AWS_ACCESS_KEY_ID", secret, "accessKey"),
        _secret_env("AWS_SECRET_ACCESS_KEY", secret, "secretKey"),
        _secret_env("HF_TOKEN", secret, "hfToken", optional=True),
    ]
    return env


def _secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}

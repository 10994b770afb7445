"""How big the trainer pod is and what the node gives it: the platform's settings, never a tenant's.

The chart's `trainer.pod` values (the operator's LORA_TRAINER_POD) are the defaults, and a
ClusterLoraTrainingTemplate's `spec.pod` overrides them for its jobs. A LoraTrainingJob and a
namespaced LoraTrainingTemplate have no such field: their owners are tenants, and a tenant who
could name volumes, annotations or a priority class could take more of a node than the platform
sized, or mount the node itself. The model names only sizes and names, no volume sources, so even
the platform's settings cannot turn into a hostPath or privileged mount.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, model_validator

from .base import ApiModel
from .names import LabelKey, ObjectName

QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
"""A Kubernetes resource quantity in the forms a platform writes (8, 500m, 32Gi, 1.5G)."""



def _number_as_text(value: object) -> object:
    # Helm's --set cpu=16 and YAML's `cpu: 16` give numbers; the Pod API takes either as a quantity.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


SUFFIXES = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity_value(text: str) -> float:
    """The amount a quantity of `QUANTITY_PATTERN` names (cores, bytes), to compare two."""
    number = text.rstrip("kmMGTPEi")
    return float(number) * SUFFIXES[text[len(number):]]


Quantity = Annotated[str, BeforeValidator(_number_as_text), Field(pattern=QUANTITY_PATTERN, max_length=40)]


class ComputeResources(ApiModel):
    """Amounts of CPU, memory and node-local disk."""

    cpu: Quantity | None = None
    """CPU cores, e.g. 8 or 7500m."""
    memory: Quantity | None = None
    """Memory, e.g. 64Gi; a memory-backed /dev/shm counts against the limit."""
    ephemeral_storage: Quantity | None = None
    """Node-local disk for /tmp and the pod's own cache folder (not the node's model cache, a
    volume of its own), e.g. 100Gi."""

    def to_pod(self) -> dict[str, str]:
        """The Pod API's spelling: cpu, memory, ephemeral-storage."""
        named = {"cpu": self.cpu, "memory": self.memory, "ephemeral-storage": self.ephemeral_storage}
        return {name: value for name, value in named.items() if value is not None}


class PodSettings(ApiModel):
    """Size, priority and pull secrets of the trainer pod, set by the platform."""

    limits: ComputeResources | None = None
    """Limits of the trainer container. Default: none."""
    requests: ComputeResources | None = None
    """Requests of the trainer container; an amount left out here is its limit, so limits alone
    give the pod Guaranteed QoS (evicted last) once CPU and memory are both limited. Default: the
    limits."""
    shm_size: Quantity | None = None
    """Size limit of the memory-backed /dev/shm (data-loader workers share tensors through it);
    it counts against the memory limit. Default: 8Gi."""
    image_pull_secrets: list[ObjectName] | None = Field(default=None, max_length=16)
    """Secrets in the job's namespace for pulling the trainer image. Default: none."""
    priority_class_name: ObjectName | None = Field(default=None, max_length=253)
    """PriorityClass of the trainer pod. Default: none (the cluster's default)."""
    annotations: dict[LabelKey, Annotated[str, Field(max_length=4096)]] | None = Field(default=None, max_length=64)
    """Extra annotations of the trainer pod (e.g. for a node's logging or GPU-monitoring agent).
    Default: none."""

    @model_validator(mode="after")
    def _requests_within_limits(self) -> PodSettings:
        # The Pod API refuses a request above its limit only when the pod is created, after the
        # job took its node; refused here, it names the field instead.
        limits, requests = (self.limits or ComputeResources()).to_pod(), (self.requests or ComputeResources()).to_pod()
        for name, request in requests.items():
            if name in limits and quantity_value(request) > quantity_value(limits[name]):
                raise ValueError(f"requests.{name} ({request}) must not exceed limits.{name} ({limits[name]})")
        return self

    def over(self, base: PodSettings) -> PodSettings:
        """These settings on top of `base`: resources field by field, annotations key by key, the
        rest replaced where set here."""
        merged = base.model_dump(exclude_none=True)
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, dict) and isinstance(merged.get(name), dict):
                merged[name] = {**merged[name], **value}
            else:
                merged[name] = value
        return PodSettings.model_validate(merged)

    def resources(self, gpu_resource: str, gpus: int) -> dict[str, dict[str, str]]:
        """The container's resources: the GPUs, and requests defaulting to the limits."""
        limits = (self.limits or ComputeResources()).to_pod()
        requests = {**limits, **(self.requests or ComputeResources()).to_pod()}
        return {"limits": {**limits, gpu_resource: str(gpus)}, "requests": {**requests, gpu_resource: str(gpus)}}


DEFAULT_SHM_SIZE = "8Gi"

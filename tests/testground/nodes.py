"""Fake GPU nodes for kwok: real Node objects with nvidia.com/gpu capacity and GPU-type labels."""

from __future__ import annotations

from .controlplane import KWOK_NODE_ANNOTATION

GPU_TYPE_LABEL = "lora-operator.io/gpu-type"


def gpu_node(name: str, gpus: int = 8, gpu_type: str = "h100", labels: dict[str, str] | None = None,
             taints: list[dict] | None = None, gpu_resource: str = "nvidia.com/gpu") -> dict:
    """The manifest of a kwok-managed GPU node that becomes Ready once kwok sees it."""
    resources = {"cpu": "64", "memory": "512Gi", "pods": "110", gpu_resource: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "type": "kwok", GPU_TYPE_LABEL: gpu_type, **(labels or {}),
            },
        },
        "spec": {"taints": taints or []},
        "status": {"allocatable": resources, "capacity": resources},
    }

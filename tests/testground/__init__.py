"""The test ground: a real local control plane (etcd, kube-apiserver, controller-manager,
scheduler, kwok GPU nodes) and a real MinIO on loopback, all built from Go modules."""

from .ground import Ground
from .minio import MinioServer
from .nodes import GPU_TYPE_LABEL, gpu_node
from .procs import free_port, wait_until
from .tools import ToolsMissing, tools_dir

__all__ = ["GPU_TYPE_LABEL", "Ground", "MinioServer", "ToolsMissing", "free_port", "gpu_node", "tools_dir",
           "wait_until"]

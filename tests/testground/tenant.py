"""A tenant on the test ground: the namespace a test's jobs run in, with what the operator expects a
platform to have given it (the storage Secret, the output bucket) and the test's own GPU nodes.

The ground is shared by the whole session, so each module that runs jobs asks for a GPU type of its
own: other modules' free nodes then never take its jobs, nor its nodes theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ground import Ground
from .operator import storage_secret

OUTPUT_BUCKET = "loras"
"""The bucket of the jobs' `output.uri` in examples/ and in `kwok_job`."""


@dataclass
class Tenant:
    """A namespace set up by `tenant()`; as a context manager it deletes the namespace on exit."""

    ground: Ground
    namespace: str
    nodes: list[str] = field(default_factory=list)
    """The kwok GPU nodes made for it, by name."""

    def __enter__(self) -> Tenant:
        return self

    def __exit__(self, *exc) -> None:
        # --wait=false: the next test need not wait for the namespace's finalizers
        self.ground.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)


def tenant(ground: Ground, namespace: str, gpu_type: str | None = None, *, nodes: int = 1, gpus: int = 1,
           prefix: str | None = None, storage: Ground | None = None, bucket: str = OUTPUT_BUCKET) -> Tenant:
    """Creates `namespace` on `ground` with its storage Secret, the bucket if missing, and GPU nodes.

    Args:
        ground: the cluster the namespace and nodes are made on.
        namespace: the namespace to create (it must not exist yet).
        gpu_type: the GPU-type label of the nodes to make; None makes no node.
        nodes: how many kwok GPU nodes to make when `gpu_type` is set.
        gpus: nvidia.com/gpu per node.
        prefix: the nodes' name prefix (default: `gpu_type`).
        storage: the ground whose MinIO the Secret's credentials and the bucket are of (default:
            `ground`; another when a second cluster shares the first one's storage).
        bucket: the bucket made in that MinIO when missing.

    Returns:
        The tenant, with the names of its nodes.
    """
    storage = storage or ground
    client = storage.minio.client()
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    ground.kubectl("create", "namespace", namespace)
    ground.apply(storage_secret(storage, namespace))
    made = ground.add_gpu_nodes(nodes, gpus=gpus, gpu_type=gpu_type, prefix=prefix or gpu_type) if gpu_type else []
    return Tenant(ground, namespace, made)

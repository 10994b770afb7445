"""Attempts that Kueue's MultiKueue runs on a worker cluster.

When a job's LocalQueue leads to a ClusterQueue with a MultiKueue AdmissionCheck, Kueue's webhook
sets the attempt's Job ``spec.managedBy: kueue.x-k8s.io/multikueue``; MultiKueue copies the Job to a
worker cluster, whose Job controller makes the pod, and mirrors the worker Job's status back. No
trainer pod ever exists here, so the attempt is followed through its Job: ``worker_pod`` turns the
mirrored Job status into the shape of a pod that `outcome.classify` reads (the trainer's results
reach the operator through storage as for any pod). The attempt's node is the worker cluster,
recorded as ``multikueue/<cluster>``: no Node can carry that name (``/`` is not allowed in one), so
it never matches a node of this cluster.
"""

from __future__ import annotations

import re
from typing import Any

from .api import ExitCode
from .render import CONTAINER

MANAGED_BY = "kueue.x-k8s.io/multikueue"
"""The Job's spec.managedBy once Kueue's webhook gave it to MultiKueue."""
NODE_PREFIX = "multikueue/"
"""How status.node names the worker cluster an attempt runs on."""


SIGNALLED = 128
"""Exit codes from 128 on are a signal's (128 + n), even if the trainer chose one to say it saved its
state on SIGTERM: never a reason to fail the Job (Kueue's preemption suspends it instead)."""
EXIT_CODE = re.compile(r"failed with exit code (\d+)")
"""How the Job controller's message for a FailJob rule of a podFailurePolicy names the exit code
(pkg/controller/job/pod_failure_policy.go, Kubernetes 1.34)."""


def with_exit_codes(batch_job: dict[str, Any]) -> dict[str, Any]:
    """`batch_job` (an attempt's Job) with a podFailurePolicy that fails it on any of the trainer's
    own non-zero exit codes: the Job's Failed condition then names the code, and so does its copy
    on the manager, where the pod's own status never arrives. The Job fails on the first failure
    anyway (backoffLimit 0); the rule only makes the reason readable. Signals (137, 143: a
    preemption, an eviction) are left out, so they end the Job as before."""
    codes = sorted(int(code) for code in ExitCode if 0 < code < SIGNALLED)
    batch_job["spec"]["podFailurePolicy"] = {"rules": [{"action": "FailJob", "onExitCodes": {
        "containerName": CONTAINER, "operator": "In", "values": codes}}]}
    return batch_job


def dispatched(batch_job: dict[str, Any] | None) -> bool:
    """The Job is MultiKueue's: its pod runs on a worker cluster, never here."""
    return bool(batch_job) and (batch_job.get("spec") or {}).get("managedBy") == MANAGED_BY


def on_worker(node: str | None) -> bool:
    """status.node names a worker cluster (see `worker_node`)."""
    return bool(node) and node.startswith(NODE_PREFIX)


def worker_node(batch_job: dict[str, Any] | None, workload: dict[str, Any] | None) -> str | None:
    """``multikueue/<cluster>`` for a dispatched Job whose Workload names the worker cluster that
    admitted it (status.clusterName), else None."""
    cluster = ((workload or {}).get("status") or {}).get("clusterName")
    return f"{NODE_PREFIX}{cluster}" if dispatched(batch_job) and cluster else None


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or () if c.get("type") == kind and c.get("status") == "True"),
                None)


def worker_pod(batch_job: dict[str, Any] | None) -> dict[str, Any] | None:
    """The attempt's pod on the worker as `outcome.classify` sees a pod, from the Job status that
    MultiKueue mirrors (None: the Job is gone, or Kueue suspended it again, which removed the pod).

    The worker's Job ends Complete when its one pod succeeded and Failed (backoffLimit 0) when it
    failed; the trainer's exit code comes from the Failed message of the `with_exit_codes` rule,
    else (a signal) the failure is classified by the Job's reason and message. While the Job
    counts a ready pod, the trainer runs; before that it is Pending.
    """
    if not dispatched(batch_job) or batch_job["spec"].get("suspend"):
        return None
    status = batch_job.get("status") or {}
    pod_status: dict[str, Any] = {"phase": "Pending"}
    if _condition(status, "Complete") or status.get("succeeded"):
        pod_status = {"phase": "Succeeded"}
    elif failed := _condition(status, "Failed"):
        message = failed.get("message") or ""
        pod_status = {"phase": "Failed", "reason": failed.get("reason"), "message": message}
        if code := EXIT_CODE.search(message):
            pod_status["containerStatuses"] = [{"name": CONTAINER, "state": {"terminated": {
                "exitCode": int(code.group(1)), "reason": "Error", "message": message}}}]
    elif status.get("ready") or status.get("active"):
        pod_status = {"phase": "Running" if status.get("ready") else "Pending"}
    return {"metadata": {"name": batch_job["metadata"]["name"],
                         "creationTimestamp": status.get("startTime") or batch_job["metadata"].get(
                             "creationTimestamp")},
            "spec": {}, "status": pod_status}

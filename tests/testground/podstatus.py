"""Pod statuses a kubelet would write when a container ends: one shape for every test that plays it."""

from __future__ import annotations

import json

from .ground import Ground

TIME = "2026-01-01T00:00:00Z"


def terminated(exit_code: int, reason: str | None = None, message: str = "", *, container: str = "trainer",
               image: str = "lora-trainer:test", started: str = TIME) -> dict:
    """The status of a pod whose only container ended with `exit_code` (phase from the code)."""
    state = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
             "startedAt": started, "finishedAt": started}
    if message:
        state["message"] = message
    return {"phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{"name": container, "image": image, "imageID": "", "ready": False,
                                   "restartCount": 0, "state": {"terminated": state}}]}


def report(ground: Ground, namespace: str, pod: str, status: dict, check: bool = True) -> None:
    """Writes `status` through the pod's status subresource, as its kubelet would."""
    ground.kubectl("patch", "pod", "-n", namespace, pod, "--subresource=status", "--type=merge",
                   "-p", json.dumps({"status": status}), check=check)

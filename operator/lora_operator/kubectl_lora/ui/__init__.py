"""``kubectl lora ui``: the dashboard, a local web server on 127.0.0.1 that acts as the user."""

from __future__ import annotations

import uvicorn

from ..kube import Jobs
from ..objects import Objects
from .app import create_app

HOST = "127.0.0.1"
"""Only this machine: the server acts with the user's kubeconfig and storage keys."""


def serve(jobs: Jobs, objects: Objects, port: int) -> None:
    """Run the dashboard until interrupted, after printing its URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(jobs, objects), host=HOST, port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
    print(f"Dashboard of namespace {jobs.namespace}: http://{HOST}:{port}/  (Ctrl-C stops it)", flush=True)
    server.run()


__all__ = ["HOST", "create_app", "serve"]

"""The dashboard in the cluster (the chart's optional ``ui.inCluster``), acting only as each request.

Behind the platform's auth proxy, every request carries the user's bearer token (``Authorization:
Bearer ...``, or ``X-Forwarded-Access-Token`` as oauth2-proxy passes it). The server has no
Kubernetes identity of its own (its pod mounts no ServiceAccount token): each token gets its own
`Dashboard` over a client that sends that token, with its own watch, so the API server's RBAC
decides what each person sees and does. A request without a token is refused before anything is
read. Tokens are kept only as the key of their dashboard, for `IDLE_SECONDS` after their last use.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from ..kube import Jobs
from ..objects import Objects, StorageOptions
from .app import Dashboard

IDLE_SECONDS = 900.0
"""A token's dashboard (and its watch) is dropped this long after its last request."""
SA_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
REFUSED = "in-cluster mode acts only as the request's identity: send the user's bearer token (Authorization header)"


def bearer(scope: Scope) -> str | None:
    """The request's token: ``Authorization: Bearer <t>`` or ``X-Forwarded-Access-Token: <t>``."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return headers.get("x-forwarded-access-token", "").strip() or None


@dataclass
class PerToken:
    """An ASGI app dispatching each request to the dashboard of its bearer token.

    Args:
        host: The API server's URL.
        namespace: The namespace shown.
        ca_file: The API server's CA bundle; None skips verification (tests only).
        options: Storage endpoint and keys for previews and downloads.
    """

    host: str
    namespace: str
    ca_file: str | None
    options: StorageOptions
    dashboards: dict[str, tuple[Dashboard, object, float]] = field(default_factory=dict)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        token = bearer(scope)
        if token is None:
            return await JSONResponse({"error": REFUSED}, status_code=401,
                                      headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
        app = await self._app(token)
        await app(scope, receive, send)

    async def _app(self, token: str):
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        for stale in [k for k, (_, _, used) in self.dashboards.items() if now - used > IDLE_SECONDS]:
            board, _, _ = self.dashboards.pop(stale)
            await asyncio.to_thread(board.feed.stop)
        if key not in self.dashboards:
            board = Dashboard(Jobs.as_bearer(self.host, token, self.namespace, self.ca_file), Objects(self.options))
            await asyncio.to_thread(board.feed.start)
            self.dashboards[key] = (board, board.app(), now)
        board, app, _ = self.dashboards[key]
        self.dashboards[key] = (board, app, now)
        return app

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for board, _, _ in self.dashboards.values():
                    await asyncio.to_thread(board.feed.stop)
                await send({"type": "lifespan.shutdown.complete"})
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora-operator-ui", description=__doc__.splitlines()[0])
    env = os.environ
    default_host = (f"https://{env['KUBERNETES_SERVICE_HOST']}:{env.get('KUBERNETES_SERVICE_PORT', '443')}"
                    if env.get("KUBERNETES_SERVICE_HOST") else None)
    parser.add_argument("--api-server", default=default_host, help="the API server's URL (default: in-cluster)")
    parser.add_argument("--ca-file", default=SA_CA if Path(SA_CA).exists() else None)
    parser.add_argument("--namespace", default=env.get("LORA_UI_NAMESPACE", "default"))
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a pod serves its Service
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    if not args.api_server:
        print("--api-server: not given and not running in a cluster", file=sys.stderr)
        return 2
    options = StorageOptions.resolve(None, None, None, None)
    app = PerToken(args.api_server, args.namespace, args.ca_file, options)
    uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                  timeout_graceful_shutdown=2)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

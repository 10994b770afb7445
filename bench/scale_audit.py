"""Which client sent which API request: the test ground's audit log (`Ground.up(audit=True)`) read
back as request counts by (client, verb, resource, response code), like `apiserver_request_total`
but split by who sent them.

The client is the first word of the request's User-Agent (`lora-operator`, `kwok`, `kube-scheduler`,
`kubectl`; the bench's own Python client sends `OpenAPI-Generator`, named `bench` here), and for
kube-controller-manager the controller its client was built for (the User-Agent's last part).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path

VERBS = {"create": "POST", "update": "PUT", "patch": "PATCH", "delete": "DELETE", "get": "GET", "list": "LIST",
         "watch": "WATCH", "deletecollection": "DELETECOLLECTION"}
"""Audit verbs as `apiserver_request_total` names them."""
CLIENTS = {"OpenAPI-Generator": "bench"}


def client_of(user_agent: str) -> str:
    """A short name of the client that sent a request, from its User-Agent."""
    name = user_agent.split("/", 1)[0] or "unknown"
    if name == "kube-controller-manager":
        return f"controller-manager/{user_agent.rsplit('/', 1)[-1]}"
    return CLIENTS.get(name, name)


def request_key(event: dict) -> tuple[str, str]:
    """(client, "VERB resource[/subresource][ (code)]"), the code only when it is not 2xx."""
    ref = event.get("objectRef") or {}
    resource = ref.get("resource") or event.get("requestURI", "?").split("?", 1)[0]
    if ref.get("subresource"):
        resource += "/" + ref["subresource"]
    body = event.get("requestObject") or {}
    if isinstance(body.get("status"), dict):  # a job's status patch (logged with its body): which write it is
        resource += f" [{status_write(body['status'])}]"
    elif ref.get("resource") == "events" and body.get("reason"):  # an Event (logged with its body): its reason
        resource += f" [{body['reason']}]"
    code = (event.get("responseStatus") or {}).get("code", 200)
    if not 200 <= code <= 299:
        resource += f" ({code})"
    return client_of(event.get("userAgent", "")), f"{VERBS.get(event['verb'], event['verb'].upper())} {resource}"


def status_write(status: dict) -> str:
    """A job status patch in a few words: the phase it writes, else the fields it sets."""
    if status.get("phase"):
        return f"phase={status['phase']}"
    return "+".join(sorted(status)) or "empty"


def requests_by_client(lines, start: float, end: float) -> Counter:
    """Counts the completed requests of audit events (JSON lines) whose response completed between
    `start` and `end` (Unix seconds), by `request_key`."""
    counts: Counter = Counter()
    for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        if event.get("stage") != "ResponseComplete":
            continue
        stamp = datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()
        if start <= stamp <= end:
            counts[request_key(event)] += 1
    return counts


def read_audit(path: Path, start: float, end: float, top: int = 40) -> list[list]:
    """The `top` most frequent (client, request, count) of the audit log at `path` in [start, end]."""
    with path.open() as lines:
        counts = requests_by_client(lines, start, end)
    return [[client, request, n] for (client, request), n in counts.most_common(top)]

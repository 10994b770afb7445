"""bench/scale_audit.py: the test ground's audit log read back as requests by client. The events
are trimmed copies of lines a scale run's API server wrote (kube-apiserver v1.34.4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"username": "admin", "groups": ["system:masters", "system:authenticated"]}


def event(stamp: str, verb: str, user_agent: str, ref: dict, code: int, body: dict | None = None,
          stage: str = "ResponseComplete") -> str:
    line = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request" if body else "Metadata",
            "stage": stage, "verb": verb, "user": ADMIN, "userAgent": user_agent, "objectRef": ref,
            "responseStatus": {"metadata": {}, "code": code}, "stageTimestamp": f"2026-12-06T{stamp}Z",
            "requestURI": "/api/v1/" + ref.get("resource", "")}
    if body:
        line["requestObject"] = body
    return json.dumps(line)


KWOK_DELETE = event("14:45:26.963249", "delete", "kwok/v0.7.0 (linux/amd64)",
                    {"resource": "pods", "namespace": "team-09", "name": "job-00207-a1", "apiVersion": "v1"}, 404)
POSITION = event("14:44:57.364894", "patch", "lora-operator/0.1.0",
                 {"resource": "loratrainingjobs", "namespace": "team-00", "name": "job-00152",
                  "apiGroup": "lora-operator.io", "apiVersion": "v1alpha1", "subresource": "status"}, 409,
                 {"status": {"queuePosition": 1}, "metadata": {"resourceVersion": "1588"}})
CLAIM = event("14:45:17.769000", "patch", "lora-operator/0.1.0",
              {"resource": "loratrainingjobs", "namespace": "team-03", "name": "job-00095",
               "apiGroup": "lora-operator.io", "apiVersion": "v1alpha1", "subresource": "status"}, 200,
              {"status": {"phase": "Running", "conditions": []}, "metadata": {"resourceVersion": "2001"}})
NODE_EVENT = event("14:44:33.901876", "create", "kube-controller-manager/v1.34.4 (linux/amd64) "
                   "kubernetes/$Format/node-controller",
                   {"resource": "events", "namespace": "default", "name": "a100-27.18eeb153938e1c26",
                    "apiVersion": "v1"}, 201,
                   {"kind": "Event", "reason": "RegisteredNode", "involvedObject": {"kind": "Node"}})
UNTAINT = event("14:45:17.048615", "patch", "OpenAPI-Generator/37.0.2/python",
                {"resource": "nodes", "name": "a10-2", "apiVersion": "v1"}, 200)


@pytest.fixture
def audit(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import scale_audit

    return scale_audit


def test_each_request_is_named_by_client_verb_resource_and_a_failed_code(audit):
    assert audit.request_key(json.loads(KWOK_DELETE)) == ("kwok", "DELETE pods (404)")
    assert audit.request_key(json.loads(UNTAINT)) == ("bench", "PATCH nodes")
    assert audit.request_key(json.loads(NODE_EVENT)) == ("controller-manager/node-controller",
                                                         "POST events [RegisteredNode]")


def test_a_job_status_patch_says_which_write_it_was(audit):
    assert audit.request_key(json.loads(POSITION)) == (
        "lora-operator", "PATCH loratrainingjobs/status [queuePosition] (409)")
    assert audit.request_key(json.loads(CLAIM)) == ("lora-operator", "PATCH loratrainingjobs/status [phase=Running]")


def test_only_completed_requests_in_the_window_count(audit, tmp_path):
    started = event("14:45:20.000000", "watch", "kwok/v0.7.0", {"resource": "pods"}, 200, stage="ResponseStarted")
    log = tmp_path / "audit.log"
    log.write_text("\n".join([NODE_EVENT, POSITION, UNTAINT, CLAIM, KWOK_DELETE, KWOK_DELETE, started, ""]))
    start = audit.datetime.fromisoformat("2026-12-06T14:45:00+00:00").timestamp()
    end = audit.datetime.fromisoformat("2026-12-06T14:45:30+00:00").timestamp()
    assert audit.read_audit(log, start, end) == [
        ["kwok", "DELETE pods (404)", 2],
        ["bench", "PATCH nodes", 1],
        ["lora-operator", "PATCH loratrainingjobs/status [phase=Running]", 1],
    ]

"""Completion webhooks against a real local HTTP receiver: signed bodies, retries, no blocking."""

from __future__ import annotations

import json
import threading

import pytest

from lora_operator.webhook import WebhookSender, completion_body, verify
from testground.webhook_receiver import Receiver

KEY = b"s3cret"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


STATUS = {"phase": "Succeeded", "message": "training complete", "completionTime": "2026-01-01T00:00:00Z",
          "conditions": [{"type": "Succeeded", "status": "True", "reason": "TrainingComplete"}],
          "checkpoints": [{"name": "epoch-0001", "epoch": 1, "step": 10, "format": "kohya",
                           "uri": "s3://b/p/c.safetensors", "validationLoss": 0.1}],
          "previews": [{"epoch": 1, "prompt": "a cat", "uris": ["s3://b/p/p0-i0.png"], "grid": "s3://b/p/grid.png"}],
          "output": {"checkpoint": "epoch-0001"}}


def test_the_body_is_signed_and_carries_phase_checkpoints_and_previews(receiver):
    sender = WebhookSender()
    body = completion_body("team", "job", "uid-1", STATUS)
    assert sender.send(receiver.url("/hook"), KEY, body).result(timeout=10) is True
    path, got, signature, _ = receiver.calls[0]
    assert got == body and verify(KEY, got, signature) and not verify(b"other", got, signature)
    doc = json.loads(got)
    assert (doc["phase"], doc["reason"], doc["job"]["name"]) == ("Succeeded", "TrainingComplete", "job")
    assert doc["checkpoints"][0]["uri"] == "s3://b/p/c.safetensors"
    assert doc["previews"][0]["uris"] == ["s3://b/p/p0-i0.png"]


def test_a_failing_receiver_is_retried_with_backoff(receiver):
    waits = []
    sender = WebhookSender(attempts=4, backoff_seconds=1.0, sleep=waits.append)
    receiver.script["/flaky"] = [500, 503, 200]
    assert sender.send(receiver.url("/flaky"), KEY, b"{}").result(timeout=10) is True
    assert len(receiver.calls) == 3 and waits == [1.0, 2.0]
    receiver.script["/down"] = [500]
    assert sender.send(receiver.url("/down"), KEY, b"{}").result(timeout=10) is False
    assert len(receiver.calls) == 3 + 4
    receiver.script["/gone"] = [404]
    assert sender.send(receiver.url("/gone"), KEY, b"{}").result(timeout=10) is False
    assert len(receiver.calls) == 3 + 4 + 1  # a refusal is not retried


def test_a_stuck_receiver_holds_up_neither_the_caller_nor_other_jobs(receiver):
    sender = WebhookSender(timeout_seconds=20)
    receiver.gates["/stuck"] = threading.Event()
    stuck = sender.send(receiver.url("/stuck"), KEY, b"{}")  # returns while the receiver holds the request
    fast = sender.send(receiver.url("/fast"), KEY, b"{}")
    assert fast.result(timeout=10) is True
    assert not stuck.done()
    receiver.gates["/stuck"].set()
    assert stuck.result(timeout=10) is True

"""Completion webhooks (spec.notify.webhook): a signed JSON POST when a job finishes.

Deliveries run on a small thread pool, each retried with exponential backoff, so a slow or failing
receiver never holds up the operator's reconcile loop or another job's delivery. The body is signed
with HMAC-SHA256 under the job's key; the receiver recomputes it over the raw body and compares
(`verify`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Lora-Signature"
"""``sha256=<hex HMAC-SHA256 of the body>``."""
EVENT_HEADER = "X-Lora-Event"
EVENT = "job.finished"


def sign(key: bytes, body: bytes) -> str:
    """The signature header value of `body` under `key`."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(key: bytes, body: bytes, header: str) -> bool:
    """Whether `header` is the signature of `body` under `key` (constant-time comparison)."""
    return hmac.compare_digest(sign(key, body), header or "")


def completion_body(namespace: str, name: str, uid: str, status: dict[str, Any]) -> bytes:
    """The JSON body of a finished job: phase, reason, message, checkpoints, previews and the output.

    Args:
        status: The job's status as the API writes it (camelCase dict).
    """
    succeeded = next((c for c in status.get("conditions") or () if c.get("type") == status.get("phase")), {})
    body = {
        "event": EVENT,
        "job": {"namespace": namespace, "name": name, "uid": uid},
        "phase": status.get("phase"),
        "reason": succeeded.get("reason"),
        "message": status.get("message"),
        "checkpoints": [{k: c.get(k) for k in ("name", "epoch", "step", "format", "uri", "validationLoss")}
                        for c in status.get("checkpoints") or ()],
        "previews": [{"epoch": p.get("epoch"), "step": p.get("step"), "prompt": p.get("prompt"),
                      "uris": p.get("uris") or [], "grid": p.get("grid")} for p in status.get("previews") or ()],
        "output": status.get("output"),
        "completionTime": status.get("completionTime"),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class WebhookSender:
    """Delivers signed POSTs in the background.

    Args:
        attempts: Tries per delivery (the first and the retries).
        backoff_seconds: Wait before the first retry; doubled each retry up to `max_backoff_seconds`.
        timeout_seconds: Per request.
        workers: Deliveries in flight at once.
        sleep: How to wait between tries (tests pass a faster one).
    """

    def __init__(self, *, attempts: int = 5, backoff_seconds: float = 2.0, max_backoff_seconds: float = 300.0,
                 timeout_seconds: float = 10.0, workers: int = 4, sleep: Callable[[float], None] = time.sleep):
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.sleep = sleep
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="webhook")

    def send(self, url: str, key: bytes, body: bytes, what: str = "") -> Future:
        """Queue a delivery and return at once; the future ends True when a 2xx came back, False when
        every try failed or the receiver refused it (a 4xx other than 408 / 429: not retried)."""
        return self.pool.submit(self._deliver, url, key, body, what)

    def send_to(self, target: Callable[[], tuple[str, bytes] | None], body: bytes, what: str = "") -> Future:
        """Like `send`, with the URL and key from `target` called on the sender's thread (it may read a
        Secret); None from it: nothing is sent."""
        def run() -> bool:
            try:
                found = target()
            except Exception as err:  # noqa: BLE001 (a background delivery must not raise into the pool)
                log.warning("%s: webhook target unreadable: %s", what, err)
                return False
            return found is not None and self._deliver(*found, body, what)

        return self.pool.submit(run)

    def close(self) -> None:
        """Stop taking deliveries; those queued still run."""
        self.pool.shutdown(wait=False)

    def _deliver(self, url: str, key: bytes, body: bytes, what: str) -> bool:
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(key, body), EVENT_HEADER: EVENT}
        delay = self.backoff_seconds
        for attempt in range(1, self.attempts + 1):
            try:
                request = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_seconds):  # noqa: S310 (the job's URL)
                    return True
            except urllib.error.HTTPError as err:
                if 400 <= err.code < 500 and err.code not in (408, 429):
                    log.warning("%s: webhook refused (HTTP %s); not retried", what, err.code)
                    return False
                problem = f"HTTP {err.code}"
            except (urllib.error.URLError, OSError) as err:
                problem = str(getattr(err, "reason", err))
            if attempt == self.attempts:
                log.warning("%s: webhook failed %d times (last: %s); given up", what, attempt, problem)
                return False
            log.info("%s: webhook try %d failed (%s); retrying in %.0fs", what, attempt, problem, delay)
            self.sleep(delay)
            delay = min(delay * 2, self.max_backoff_seconds)
        return False

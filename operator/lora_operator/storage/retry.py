"""Retrying transient object-store failures with exponential backoff.

Two layers work together: urllib3's ``Retry`` inside the minio client retries single
requests a few times within a second or two (a dropped connection, one 503), and
`call_with_retry` below retries the whole operation (a multipart upload, a ranged read)
with exponential backoff until a total time budget is spent, so that a MinIO restart of
half a minute is survived while a storage that stays away ends the job with a clear
error instead of a hang.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError

from .errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_S3_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
    "XMinioServerNotInitialized", "XMinioReadQuorum", "XMinioWriteQuorum", "OperationTimedOut",
})
"""S3 error codes that mean "try again later" rather than "no"."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often an operation is retried.

    Attributes:
        total_seconds: Give up once this much time has passed since the first try. Default: 300.
        initial_delay: First backoff in seconds; it doubles per failure. Default: 0.5.
        max_delay: Longest single backoff in seconds. Default: 15.
    """

    total_seconds: float = 300.0
    initial_delay: float = 0.5
    max_delay: float = 15.0

    def delays(self):
        """Backoff delays (with up to 20% jitter), unbounded; the caller stops at the deadline."""
        delay = self.initial_delay
        while True:
            yield delay * (1.0 + 0.2 * random.random())
            delay = min(delay * 2.0, self.max_delay)


def is_transient(exc: BaseException) -> bool:
    """Whether an exception from the minio SDK or urllib3 is worth retrying."""
    if isinstance(exc, S3Error):
        return exc.code in TRANSIENT_S3_CODES
    if isinstance(exc, ServerError):
        return exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, InvalidResponseError):
        # A non-XML answer: typically a proxy or a starting server returning an HTML 5xx page.
        return True
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def call_with_retry(
    fn: Callable[[], T], *, what: str, uri: str, policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``fn`` until it succeeds, retrying transient failures within the policy's budget.

    Args:
        fn: The operation; it must be safe to run again from the start.
        what: A short verb phrase for messages, e.g. "upload".
        uri: The object or prefix, named in messages.
        policy: Backoff and total time. Default: `RetryPolicy()` (5 minutes).
        sleep: Injected for tests.
        clock: Injected for tests.

    Returns:
        What ``fn`` returns.

    Raises:
        StorageError: A permanent failure at once, or a transient one once the budget is spent
            (then ``transient`` is true).
    """
    policy = policy or RetryPolicy()
    deadline = clock() + policy.total_seconds
    for attempts, delay in enumerate(policy.delays(), start=1):
        try:
            return fn()
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised as StorageError
            if not is_transient(exc):
                raise StorageError(f"{what} {uri} failed: {describe(exc)}", uri=uri,
                                   code=exc.code if isinstance(exc, S3Error) else None) from exc
            if clock() + delay > deadline:
                raise StorageError(
                    f"{what} {uri} failed after {attempts} attempts over {policy.total_seconds:.0f}s: "
                    f"{describe(exc)}", uri=uri, transient=True,
                ) from exc
            log.warning("%s %s failed (%s); retrying in %.1fs", what, uri, describe(exc), delay)
            sleep(delay)
    raise AssertionError("unreachable")


def describe(exc: BaseException) -> str:
    """A one-line description of a storage exception (S3 code and message, or the cause)."""
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"

"""Storage URIs and the retry policy for transient failures."""

from __future__ import annotations

import re

import pytest
import urllib3
from minio.error import ServerError

from lora_operator.storage import (
    InvalidUri,
    RetryPolicy,
    StorageError,
    call_with_retry,
    is_transient,
    open_store,
    parse_uri,
    store_from_env,
)


@pytest.mark.parametrize("uri, parsed", [
    ("s3://bucket/a/b/", ("s3", "bucket", "a/b/")),
    ("s3://bucket", ("s3", "bucket", "")),
    ("s3://bucket//x", ("s3", "bucket", "x")),
    ("file:///abs/path", ("file", "", "/abs/path")),
    ("file:///with%20space", ("file", "", "/with space")),
    ("hf://org/name", ("hf", "org/name", "")),
    ("hf://org/name@v1.0", ("hf", "org/name", "v1.0")),
])
def test_parse_uri(uri, parsed):
    assert parse_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["gs://b/k", "s3:///key", "file://relative/path", "bucket/key", "hf://a/b/c"])
def test_bad_uris_are_refused_naming_them(uri):
    with pytest.raises(InvalidUri, match=re.escape(uri)):
        parse_uri(uri)


def test_hf_is_not_an_object_store():
    with pytest.raises(InvalidUri, match="not an object store"):
        open_store("hf://org/name")


def test_s3_store_prefix_and_env_settings():
    store = store_from_env("s3://bucket/jobs/ns/j1", env={
        "S3_ENDPOINT": "127.0.0.1:1", "S3_SECURE": "false", "AWS_ACCESS_KEY_ID": "a",
        "AWS_SECRET_ACCESS_KEY": "b"})
    assert store.uri == "s3://bucket/jobs/ns/j1/"
    assert store.uri_of("progress.json") == "s3://bucket/jobs/ns/j1/progress.json"
    assert store.client._base_url.is_https is False


class Clock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_transient_failures_are_retried_with_growing_backoff():
    clock, calls = Clock(), []

    def flaky():
        calls.append(1)
        if len(calls) < 5:
            raise urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.NewConnectionError(None, "refused"))
        return "ok"

    assert call_with_retry(flaky, what="upload", uri="s3://b/k", sleep=clock.sleep, clock=lambda: clock.now) == "ok"
    assert len(calls) == 5
    assert clock.sleeps == sorted(clock.sleeps) and clock.sleeps[-1] > 2 * clock.sleeps[0]


def test_an_outage_longer_than_the_budget_fails_naming_the_uri():
    clock = Clock()

    def down():
        raise ServerError("server failed with HTTP status code 503", 503)

    with pytest.raises(StorageError, match=r"upload s3://b/k failed after \d+ attempts") as error:
        call_with_retry(down, what="upload", uri="s3://b/k", policy=RetryPolicy(total_seconds=60),
                        sleep=clock.sleep, clock=lambda: clock.now)
    assert error.value.transient and error.value.uri == "s3://b/k"
    assert 30 < clock.now <= 60


def test_permanent_failures_are_not_retried():
    clock = Clock()

    def denied():
        raise ValueError("bad bucket name")

    with pytest.raises(StorageError, match="bad bucket name") as error:
        call_with_retry(denied, what="list", uri="s3://b/", sleep=clock.sleep, clock=lambda: clock.now)
    assert not error.value.transient and clock.sleeps == []


def test_transient_classification():
    assert is_transient(ConnectionResetError())
    assert is_transient(ServerError("x", 502))
    assert not is_transient(ServerError("x", 400))
    assert not is_transient(KeyError("x"))

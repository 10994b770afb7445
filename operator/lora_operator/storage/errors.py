"""Errors of the object store."""

from __future__ import annotations


class StorageError(Exception):
    """An object-store operation failed for good (after retries), naming the URI.

    Attributes:
        uri: The object or prefix the operation was about.
        transient: True when the cause was an outage (connection refused, 5xx) that outlasted
            the retry budget, so trying again later may help; False for refusals such as
            access denied or a missing bucket.
    """

    def __init__(self, message: str, *, uri: str, transient: bool = False):
        super().__init__(message)
        self.uri = uri
        self.transient = transient


class ObjectNotFound(StorageError):
    """The object (or bucket) does not exist."""

    def __init__(self, uri: str):
        super().__init__(f"{uri} does not exist", uri=uri)


class InvalidUri(ValueError):
    """A URI that is not s3://bucket/key, file:///abs/path or hf://org/name."""

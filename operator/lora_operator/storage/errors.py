"""Errors of the object store."""

from __future__ import annotations


class StorageError(Exception):
    """An object-store operation failed for good (after retries), naming the URI.

    Attributes:
        uri: The object or prefix the operation was about.
        transient: True when the cause was an outage (connection refused, 5xx) that outlasted
            the retry budget, so trying again later may help; False for refusals such as
            access denied or a missing bucket.
        code: The S3 error code when the store answered with one (e.g. AccessDenied).
    """

    def __init__(self, message: str, *, uri: str, transient: bool = False, code: str | None = None):
        super().__init__(message)
        self.uri = uri
        self.transient = transient
        self.code = code

    @property
    def denied(self) -> bool:
        """The store refused these credentials for this object: a wrong bucket or key, not an outage."""
        return self.code in DENIED_CODES


DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                          "AccountProblem", "InvalidToken", "ExpiredToken"})
"""S3 error codes that mean "these credentials may not do this"."""


class ObjectNotFound(StorageError):
    """The object (or bucket) does not exist."""

    def __init__(self, uri: str):
        super().__init__(f"{uri} does not exist", uri=uri)


class InvalidUri(ValueError):
    """A URI that is not s3://bucket/key, file:///abs/path or hf://org/name."""

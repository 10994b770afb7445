"""Storage URIs: ``s3://bucket/key-prefix``, ``file:///abs/path`` and ``hf://org/name``."""

from __future__ import annotations

from urllib.parse import unquote

from .errors import InvalidUri

SCHEMES = ("s3", "file", "hf")


def parse_uri(uri: str) -> tuple[str, str, str]:
    """Split a storage URI into its scheme, bucket and key.

    Args:
        uri: ``s3://bucket/key``, ``file:///abs/path`` or ``hf://org/name[@revision]``.

    Returns:
        ``(scheme, bucket, key)``. For ``file://`` the bucket is empty and the key is the
        absolute path; for ``hf://`` the bucket is the repository id (``org/name``) and the
        key is the revision (empty for the default branch). An s3 key keeps a trailing
        slash when the URI has one; it never starts with a slash.

    Raises:
        InvalidUri: The URI has another scheme, no bucket, or a relative file path.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES:
        raise InvalidUri(f"{uri!r}: expected s3://bucket/key, file:///abs/path or hf://org/name")
    if scheme == "file":
        path = unquote(rest)
        if not path.startswith("/"):
            raise InvalidUri(f"{uri!r}: a file:// URI needs an absolute path (file:///abs/path)")
        return scheme, "", path
    if scheme == "hf":
        repo, _, revision = rest.strip("/").partition("@")
        if repo.count("/") > 1 or not repo or repo.startswith("/"):
            raise InvalidUri(f"{uri!r}: expected hf://org/name or hf://org/name@revision")
        return scheme, repo, revision
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InvalidUri(f"{uri!r}: no bucket name")
    return scheme, bucket, key.lstrip("/")


def join_key(prefix: str, key: str) -> str:
    """Join a store prefix and a relative key with exactly one slash between them."""
    if not prefix:
        return key.lstrip("/")
    if not key:
        return prefix
    return prefix.rstrip("/") + "/" + key.lstrip("/")


def as_prefix(key: str) -> str:
    """A key made into a folder-like prefix: empty stays empty, otherwise it ends with a slash."""
    return key if not key or key.endswith("/") else key + "/"

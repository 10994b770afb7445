"""The object-store interface shared by the operator and the trainer."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import StorageError


@dataclass(frozen=True)
class ObjectInfo:
    """An object under a store's prefix.

    Attributes:
        key: Relative to the store's prefix, with forward slashes.
        size: Bytes.
        etag: An identity of the content: the S3 ETag (quotes stripped), or size and
            modification time for local files. Equal ETags mean unchanged content.
    """

    key: str
    size: int
    etag: str


class ObjectStore(abc.ABC):
    """Objects under one URI prefix; every key is relative to that prefix.

    Attributes:
        uri: The prefix URI the store was opened for, ending with a slash (unless it is a
            bucket root or file system root).
    """

    uri: str

    def uri_of(self, key: str) -> str:
        """The full URI of a key, for messages and for status fields."""
        return self.uri.rstrip("/") + "/" + key.lstrip("/") if key else self.uri

    @abc.abstractmethod
    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Upload a local file. The local file is never removed, not even when the upload fails."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Write an object from memory."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """Read an object into memory; None when it does not exist."""

    @abc.abstractmethod
    def get_file(self, key: str, path: str | os.PathLike) -> None:
        """Download an object to a local file (written under a temporary name, then renamed).

        Raises:
            ObjectNotFound: The object does not exist.
        """

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and ETag of an object; None when it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under ``prefix`` (recursive), sorted by key."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error."""

    @abc.abstractmethod
    def copy(self, src_key: str, dst_key: str) -> None:
        """Copy an object within the store (server side where the backend can)."""

    def exists(self, key: str) -> bool:
        """Whether an object exists."""
        return self.stat(key) is not None

    def download_prefix(self, prefix: str, local_dir: str | os.PathLike) -> list[Path]:
        """Download every object under ``prefix`` into ``local_dir``, keeping relative paths.

        Returns:
            The local files written, in key order.

        Raises:
            StorageError: A key would land outside ``local_dir`` (e.g. contains ``..``).
        """
        root = Path(local_dir).resolve()
        base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        written = []
        for info in self.list(base):
            relative = info.key[len(base):]
            if not relative or relative.endswith("/"):
                continue  # "folder" marker objects some tools create
            target = (root / relative).resolve()
            if not target.is_relative_to(root):
                raise StorageError(f"{self.uri_of(info.key)}: key escapes the target folder",
                                   uri=self.uri_of(info.key))
            self.get_file(info.key, target)
            written.append(target)
        return written

    def upload_dir(self, local_dir: str | os.PathLike, prefix: str = "") -> list[str]:
        """Upload every file under ``local_dir`` to ``prefix``, keeping relative paths.

        Returns:
            The keys written, sorted.
        """
        root = Path(local_dir)
        base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        keys = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = base + path.relative_to(root).as_posix()
            self.put_file(key, path)
            keys.append(key)
        return keys

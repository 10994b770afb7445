"""The file:// backend: a folder that behaves like a bucket (local runs and tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .base import ObjectInfo, ObjectStore
from .errors import ObjectNotFound, StorageError

TMP_PREFIX = ".lora-tmp-"
"""Names of files being written; they are never listed."""


class LocalStore(ObjectStore):
    """Objects are files under a root folder; keys are relative POSIX paths.

    Writes go to a temporary file in the same folder and are renamed into place, so a
    reader never sees half an object. ETags are size and modification time, not hashes,
    so listing a folder of large models stays cheap.
    """

    def __init__(self, root: str | os.PathLike, uri: str | None = None):
        self.root = Path(root)
        self.uri = uri or self.root.as_uri() + "/"

    def _path(self, key: str) -> Path:
        path = self.root / key.lstrip("/")
        if ".." in Path(key).parts:
            raise StorageError(f"{self.uri_of(key)}: '..' is not allowed in keys", uri=self.uri_of(key))
        return path

    def _write(self, key: str, fill) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    fill(out)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise StorageError(f"write {self.uri_of(key)} failed: {exc}", uri=self.uri_of(key)) from exc

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        with open(path, "rb") as src:
            self._write(key, lambda out: shutil.copyfileobj(src, out, 1 << 20))

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._write(key, lambda out: out.write(data))

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFound(self.uri_of(key))
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(TMP_PREFIX + target.name)
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return _info(key, path)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        # Walk only the deepest folder the prefix names, then filter by the full prefix.
        folder = self.root / prefix.rpartition("/")[0]
        if not folder.is_dir():
            return []
        found = []
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(_info(key, full))
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def copy(self, src_key: str, dst_key: str) -> None:
        source = self._path(src_key)
        if not source.is_file():
            raise ObjectNotFound(self.uri_of(src_key))
        with open(source, "rb") as src:
            self._write(dst_key, lambda out: shutil.copyfileobj(src, out, 1 << 20))


def _info(key: str, path: Path) -> ObjectInfo:
    st = path.stat()
    return ObjectInfo(key=key, size=st.st_size, etag=f"{st.st_size:x}-{st.st_mtime_ns:x}")

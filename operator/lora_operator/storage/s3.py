"""The s3:// backend on the minio SDK: retried operations and parallel ranged downloads."""

from __future__ import annotations

import contextlib
import io
import mimetypes
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error

from .base import ObjectInfo, ObjectStore
from .errors import ObjectNotFound
from .retry import RetryPolicy, call_with_retry
from .uri import join_key

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"})
TMP_PREFIX = ".lora-tmp-"
PART_SIZE = 32 << 20
"""Objects larger than this are downloaded as parallel ranged GETs of this size."""
CHUNK = 1 << 20


def make_client(endpoint: str, access_key: str | None, secret_key: str | None, *, secure: bool,
                region: str | None = None, max_connections: int = 32) -> Minio:
    """A minio client whose requests are retried briefly by urllib3 (one dropped connection,
    one 503); longer outages are left to `call_with_retry`.

    Args:
        endpoint: ``host:port``; an ``http://`` or ``https://`` scheme overrides ``secure``.
        access_key: Access key, or None for anonymous access.
        secret_key: Secret key.
        secure: Use TLS.
        region: Bucket region; None asks the server once per bucket.
        max_connections: Connection-pool size per host, enough for parallel ranged reads.
    """
    if "://" in endpoint:
        scheme, _, endpoint = endpoint.partition("://")
        secure = scheme == "https"
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10.0, read=120.0),
        maxsize=max_connections,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(endpoint.rstrip("/"), access_key=access_key or None, secret_key=secret_key or None,
                 secure=secure, region=region, http_client=http)


def _missing(exc: S3Error) -> bool:
    return exc.code in NOT_FOUND_CODES


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix`` through a minio client.

    Every operation is retried on transient failures (see `call_with_retry`); downloads are
    written to a temporary file and renamed, uploads never touch the local file.
    """

    def __init__(self, client: Minio, bucket: str, prefix: str, *, uri: str,
                 policy: RetryPolicy | None = None, part_size: int | None = None, workers: int = 8):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.uri = uri
        self.policy = policy or RetryPolicy()
        self.part_size = part_size or PART_SIZE
        self.workers = workers

    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _retry(self, fn, what: str, key: str):
        return call_with_retry(fn, what=what, uri=self.uri_of(key), policy=self.policy)

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        content_type = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
        self._retry(lambda: self.client.fput_object(self.bucket, self._key(key), str(path),
                                                    content_type=content_type), "upload", key)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        content_type = content_type or mimetypes.guess_type(key)[0] or "application/octet-stream"
        self._retry(lambda: self.client.put_object(self.bucket, self._key(key), io.BytesIO(data), len(data),
                                                   content_type=content_type), "upload", key)

    def get_bytes(self, key: str) -> bytes | None:
        def read():
            try:
                response = self.client.get_object(self.bucket, self._key(key))
            except S3Error as exc:
                if _missing(exc):
                    return None
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()
        return self._retry(read, "download", key)

    def stat(self, key: str) -> ObjectInfo | None:
        def head():
            try:
                st = self.client.stat_object(self.bucket, self._key(key))
            except S3Error as exc:
                if _missing(exc):
                    return None
                raise
            return ObjectInfo(key=key, size=st.size or 0, etag=(st.etag or "").strip('"'))
        return self._retry(head, "stat", key)

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        info = self.stat(key)
        if info is None:
            raise ObjectNotFound(self.uri_of(key))
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(TMP_PREFIX + target.name)
        with open(tmp, "wb") as out:
            out.truncate(info.size)
        try:
            step = self.part_size
            parts = [(off, min(step, info.size - off)) for off in range(0, info.size, step)]
            if len(parts) > 1:
                with ThreadPoolExecutor(min(self.workers, len(parts))) as pool:
                    list(pool.map(lambda part: self._get_range(key, info.etag, tmp, *part), parts))
            elif parts:
                self._get_range(key, info.etag, tmp, *parts[0])
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _get_range(self, key: str, etag: str, path: Path, offset: int, length: int) -> None:
        """Write bytes [offset, offset+length) of the object into ``path`` at the same offset.

        ``If-Match`` makes a part fail (not mix two versions) when the object changes meanwhile.
        """
        def fetch():
            response = self.client.get_object(self.bucket, self._key(key), offset=offset, length=length,
                                              request_headers={"If-Match": f'"{etag}"'} if etag else None)
            fd = os.open(path, os.O_WRONLY)
            try:
                position = offset
                for chunk in response.stream(CHUNK):
                    position += os.pwrite(fd, chunk, position)
            finally:
                os.close(fd)
                response.close()
                response.release_conn()
            if position != offset + length:
                raise urllib3.exceptions.ProtocolError(
                    f"short read: {position - offset} of {length} bytes at offset {offset}")
        self._retry(fetch, "download", key)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._key("")
        strip = len(base.rstrip("/") + "/") if base else 0

        def listing():
            try:
                objects = self.client.list_objects(self.bucket, prefix=self._key(prefix), recursive=True)
                return [ObjectInfo(key=obj.object_name[strip:], size=obj.size or 0,
                                   etag=(obj.etag or "").strip('"'))
                        for obj in objects if not obj.is_dir]
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    raise ObjectNotFound(f"s3://{self.bucket}/ (bucket)") from exc
                raise
        return sorted(self._retry(listing, "list", prefix), key=lambda info: info.key)

    def delete(self, key: str) -> None:
        self._retry(lambda: self.client.remove_object(self.bucket, self._key(key)), "delete", key)

    def copy(self, src_key: str, dst_key: str) -> None:
        def copy():
            try:
                self.client.copy_object(self.bucket, self._key(dst_key),
                                        CopySource(self.bucket, self._key(src_key)))
            except S3Error as exc:
                if _missing(exc):
                    raise ObjectNotFound(self.uri_of(src_key)) from exc
                raise
        self._retry(copy, "copy", dst_key)

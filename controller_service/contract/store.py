"""One object-store interface for everything that must outlive a process.

Two backends behind the same verbs: ``file:///abs/dir`` (the embedded
default, one machine) and ``s3://bucket/prefix`` (MinIO or any S3-compatible
endpoint, spoken to only through the ``minio`` package). Keys are relative,
slash separated paths such as ``runs/abc/state.json``; the layout is in
:mod:`controller_service.contract.keys`.

Writes are atomic: a reader sees the old object or the new one, never half of
one. On disk that is temp file + fsync + rename; on S3 a single PUT already is.
Every failure of the store itself (unreachable, full disk, refused) is a
:class:`StoreError`, which the service answers with 503 and clients retry.
S3 also offers conditional writes (``If-None-Match``/``If-Match``, honoured by
AWS S3, MinIO and moto), which the controller's writer lease is built on.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class StoreError(RuntimeError):
    """The store is unreachable, misconfigured, or refused an operation."""


class ObjectNotFound(StoreError, KeyError):
    """No object under that key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "object not found"


class PreconditionFailed(StoreError):
    """A conditional write found the object not as expected (someone else wrote it)."""


# Readiness fails below this much free space: a store that cannot take the next
# checkpoint is not ready, although it still answers (docs/design.md, "Reliability").
MIN_FREE_BYTES = 64 << 20


def check_key(key: str) -> str:
    """Refuse keys that could escape the store root or collide with temp files."""
    parts = key.split("/")
    if not key or any(part in {"", ".", ".."} for part in parts):
        raise ValueError(f"invalid object key {key!r}")
    if parts[-1].startswith(".tmp-"):
        raise ValueError(f"object key {key!r} uses the reserved prefix .tmp-")
    return key


class ObjectStore(ABC):
    """Byte objects under string keys; see the module docstring for guarantees."""

    uri: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` atomically, replacing any old object."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Read the object; raise :class:`ObjectNotFound` when there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys that start with ``prefix``, sorted."""

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """The names of the "folders" right under ``prefix`` (which ends with "/"), sorted:
        listing ``runs/`` this way does not read every checkpoint key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; missing objects are not an error."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`StoreError` unless the store can be read and written (readiness)."""

    def uri_of(self, key: str) -> str:
        """The absolute URI of ``key``, as handed to other processes."""
        return f"{self.uri.rstrip('/')}/{check_key(key)}"

    def key_of(self, uri: str) -> str:
        """Inverse of :meth:`uri_of`; refuses URIs that point outside this store."""
        root = self.uri.rstrip("/") + "/"
        if not uri.startswith(root):
            raise StoreError(f"{uri} is not inside the store {self.uri}")
        return check_key(uri[len(root) :])

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json.dumps(value, indent=1, sort_keys=True).encode())

    def get_json(self, key: str) -> Any:
        data = self.get(key)
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.uri_of(key)} is not valid JSON: {exc}") from exc


class FileStore(ObjectStore):
    """Objects as files under a root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            self._write(path, data)
        except OSError as exc:  # ENOSPC, EROFS, EACCES, EIO: the store's failure, not a bug
            reason = errno.errorcode.get(exc.errno or 0, "OSError")
            raise StoreError(f"writing {self.uri_of(key)} failed ({reason}): {exc}") from exc

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {self.uri_of(key)}") from None
        except OSError as exc:
            raise StoreError(f"reading {self.uri_of(key)} failed: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        folder = self.root / prefix.rpartition("/")[0]  # walk only below the prefix's folder
        keys = []
        try:
            for path in folder.rglob("*"):
                if path.is_file() and not path.name.startswith(".tmp-"):
                    key = path.relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        keys.append(key)
        except OSError as exc:
            raise StoreError(f"listing {self.uri}/{prefix} failed: {exc}") from exc
        return sorted(keys)

    def list_dirs(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        try:
            return sorted(p.name for p in folder.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"listing {self.uri_of(prefix + '_')} failed: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"deleting {self.uri_of(key)} failed: {exc}") from exc

    def check(self) -> None:
        if not (self.root.is_dir() and os.access(self.root, os.R_OK | os.W_OK)):
            raise StoreError(f"store directory {self.root} is not readable and writable")
        stats = os.statvfs(self.root)
        free = stats.f_bavail * stats.f_frsize
        if free < MIN_FREE_BYTES:
            raise StoreError(
                f"store directory {self.root} has {free >> 20} MiB free, "
                f"below the {MIN_FREE_BYTES >> 20} MiB a checkpoint needs"
            )


# Per request: a store that does not answer within these is down, and callers retry.
S3_CONNECT_TIMEOUT, S3_READ_TIMEOUT = 5.0, 60.0


def _s3_client_from_env() -> Any:
    """A ``minio.Minio`` client configured by the ``ADASEG_S3_*`` variables, with bounded
    timeouts (minio's default read timeout is minutes: a hung store would hang its callers)."""
    import certifi
    import urllib3
    from minio import Minio

    endpoint = os.environ.get("ADASEG_S3_ENDPOINT", "")
    if not endpoint:
        raise StoreError("s3:// store needs ADASEG_S3_ENDPOINT (host:port of MinIO)")
    secure = os.environ.get("ADASEG_S3_SECURE", "false").lower() in {"1", "true", "yes"}
    if "://" in endpoint:  # accept http://host:port as well as host:port
        parsed = urlparse(endpoint)
        secure, endpoint = parsed.scheme == "https", parsed.netloc
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=S3_CONNECT_TIMEOUT, read=S3_READ_TIMEOUT),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        endpoint,
        access_key=os.environ.get("ADASEG_S3_ACCESS_KEY", ""),
        secret_key=os.environ.get("ADASEG_S3_SECRET_KEY", ""),
        secure=secure,
        region=os.environ.get("ADASEG_S3_REGION") or None,
        http_client=http,
    )


class S3Store(ObjectStore):
    """Objects in an S3 bucket under an optional prefix, through ``minio``."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        if not bucket:
            raise StoreError("s3:// store URI needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else _s3_client_from_env()
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _name(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Translate minio and transport errors into store errors naming the object."""
        from minio.error import MinioException, S3Error
        from urllib3.exceptions import HTTPError

        try:
            yield
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject"}:
                raise ObjectNotFound(f"no object {self.uri_of(key)}") from None
            if exc.code in {"PreconditionFailed", "ConditionalRequestConflict"}:
                raise PreconditionFailed(f"S3 {action} of {self.uri_of(key)}: {exc.code}") from None
            raise StoreError(f"S3 {action} of {self.uri_of(key)} failed: {exc}") from exc
        except (MinioException, HTTPError, OSError) as exc:
            raise StoreError(f"S3 {action} of {self.uri_of(key)} failed: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        with self._errors("put", key):
            self.client.put_object(self.bucket, self._name(key), io.BytesIO(data), len(data))

    def get(self, key: str) -> bytes:
        return self.get_with_etag(key)[0]

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The object and its ETag (what :meth:`put_if` compares)."""
        with self._errors("get", key):
            response = self.client.get_object(self.bucket, self._name(key))
            try:
                return response.read(), response.headers.get("etag", "").strip('"')
            finally:
                response.close()
                response.release_conn()

    def put_if(self, key: str, data: bytes, *, etag: str | None) -> str:
        """Write only if the object is unchanged: ``etag`` None means "only if absent"
        (``If-None-Match: *``), else ``If-Match: etag``. Returns the new ETag; raises
        :class:`PreconditionFailed` when someone else wrote first. (minio's public
        ``put_object`` turns unknown headers into user metadata, so this goes through
        its PutObject call with the headers as given.)"""
        headers = {"If-None-Match": "*"} if etag is None else {"If-Match": f'"{etag}"'}
        headers["Content-Type"] = "application/json"
        with self._errors("conditional put", key):
            result = self.client._put_object(self.bucket, self._name(key), data, headers=headers)
        return result.etag.strip('"')

    def exists(self, key: str) -> bool:
        try:
            with self._errors("stat", key):
                self.client.stat_object(self.bucket, self._name(key))
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        with self._errors("list", prefix or "_"):
            names = [
                obj.object_name
                for obj in self.client.list_objects(
                    self.bucket, prefix=root + prefix, recursive=True
                )
            ]
        return sorted(name[len(root) :] for name in names)

    def list_dirs(self, prefix: str) -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        with self._errors("list", prefix + "_"):
            names = [
                obj.object_name
                for obj in self.client.list_objects(self.bucket, prefix=root + prefix)
                if obj.is_dir
            ]
        return sorted(name[len(root + prefix) :].rstrip("/") for name in names)

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.remove_object(self.bucket, self._name(key))

    def check(self) -> None:
        with self._errors("check", "_"):
            if not self.client.bucket_exists(self.bucket):
                raise StoreError(f"bucket {self.bucket!r} does not exist at the S3 endpoint")


def open_store(uri: str) -> ObjectStore:
    """Open ``file:///abs/dir`` (or a plain path) or ``s3://bucket/prefix``."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        if parsed.netloc not in {"", "localhost"}:
            raise StoreError(f"file:// store URI must be absolute (file:///dir), got {uri!r}")
        return FileStore(parsed.path)
    if parsed.scheme == "":
        return FileStore(uri)
    raise StoreError(f"unsupported store URI {uri!r}: use file:///dir or s3://bucket/prefix")

"""One writer per store: the controller's lease on its store.

Two controllers driving the same runs would each trust their own in-memory
state and overwrite each other's writes. So a controller takes a *writer
lease* when it starts and checks it before every write (a fencing check):

* on a file store, an exclusive ``flock`` on ``controller.lock`` in the store's
  root, which the kernel releases when the process dies (kill -9 included), so
  a restart takes it at once;
* on S3, the object ``controller.lock``, created with ``If-None-Match: *`` and
  renewed every ``ttl/3`` with ``If-Match: <etag>`` (conditional writes, which
  AWS S3, MinIO and moto honour). A holder that stops renewing is stale once
  its ETag has not changed for ``ttl`` seconds of the *observer's* clock (no
  trust in clock agreement), and is then taken over, again conditionally.

A second controller finds the lease held and refuses to start, naming the
holder. Staleness is measured by watching, so a controller restarted after a
crash waits up to ``ttl`` for its predecessor's lease before it starts.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Protocol

from controller_service.contract.keys import WRITER_LOCK_KEY
from controller_service.contract.store import (
    FileStore,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    S3Store,
    StoreError,
)

log = logging.getLogger(__name__)
DEFAULT_TTL = 30.0
FLOCK_WAIT = 2.0  # seconds a file-store controller waits for the lock before refusing


class StoreBusy(StoreError):
    """Another controller holds the store's writer lease."""


def holder_info(ttl: float) -> dict[str, Any]:
    return {
        "holder": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": time.time(),
        "ttl": ttl,
    }


def describe(info: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("started_at", 0)))
    return f"controller pid {info.get('pid')} on host {info.get('host')} (since {started})"


class WriterLock(Protocol):
    info: dict[str, Any]

    def acquire(self, wait: float) -> None: ...
    def check(self) -> None: ...
    def renew(self) -> None: ...
    def release(self) -> None: ...


class NoLock:
    """For callers that own their store by construction (tests of the state machine)."""

    info: dict[str, Any] = {}

    def acquire(self, wait: float) -> None: ...
    def check(self) -> None: ...
    def renew(self) -> None: ...
    def release(self) -> None: ...


class FileWriterLock:
    """``flock`` on ``<root>/controller.lock``; its content names the holder for others."""

    def __init__(self, store: FileStore, ttl: float = DEFAULT_TTL) -> None:
        self.path = store.root / WRITER_LOCK_KEY
        self.uri = store.uri
        self.info = holder_info(ttl)
        self._fd: int | None = None

    def acquire(self, wait: float) -> None:
        """``wait`` is capped at a few seconds: a held ``flock`` means a live holder (the
        kernel drops it when a process dies), which waiting longer would not change."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + min(wait, FLOCK_WAIT)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._read(fd)
                    os.close(fd)
                    raise StoreBusy(
                        f"store {self.uri} is in use by {describe(holder)}: one controller "
                        "per store; stop it first or use another store"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.info).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return {}

    def check(self) -> None:
        if self._fd is None:
            raise StoreBusy(f"this controller does not hold the writer lease of {self.uri}")

    def renew(self) -> None:
        """Nothing to renew: the kernel holds the lock until the process ends."""

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class S3WriterLock:
    """The conditional-write lease described in the module docstring."""

    def __init__(self, store: S3Store, ttl: float = DEFAULT_TTL) -> None:
        self.store = store
        self.ttl = ttl
        self.info = holder_info(ttl)
        self._etag: str | None = None
        self._valid_until = 0.0
        self._lost: str | None = None
        self._lock = threading.Lock()

    def _body(self) -> bytes:
        return json.dumps({**self.info, "renewed_at": time.time()}).encode()

    def _ours(self) -> str | None:
        """Our ETag if the object names us (a write whose answer was lost still counts)."""
        try:
            data, etag = self.store.get_with_etag(WRITER_LOCK_KEY)
        except ObjectNotFound:
            return None
        try:
            holder = json.loads(data).get("holder")
        except ValueError:
            holder = None
        return etag if holder == self.info["holder"] else None

    def acquire(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        seen: tuple[str, float] | None = None  # (etag, when first seen unchanged)
        while True:
            started = time.monotonic()
            try:
                self._took(self.store.put_if(WRITER_LOCK_KEY, self._body(), etag=None), started)
                return
            except PreconditionFailed:
                pass
            try:
                data, etag = self.store.get_with_etag(WRITER_LOCK_KEY)
            except ObjectNotFound:
                continue
            try:
                holder = json.loads(data)
            except ValueError:
                holder = {}
            if holder.get("holder") == self.info["holder"]:
                self._took(etag, started)
                return
            if seen is None or seen[0] != etag:
                seen = (etag, time.monotonic())
            elif time.monotonic() - seen[1] >= float(holder.get("ttl", self.ttl)):
                try:  # stale: nobody renewed it for a whole ttl
                    self._took(self.store.put_if(WRITER_LOCK_KEY, self._body(), etag=etag), started)
                    log.warning("took over the stale writer lease of %s", describe(holder))
                    return
                except PreconditionFailed:
                    seen = None
            if time.monotonic() >= deadline:
                raise StoreBusy(
                    f"store {self.store.uri} is in use by {describe(holder)}, which renews its "
                    "writer lease: one controller per store; stop it first or use another store"
                )
            time.sleep(min(1.0, self.ttl / 6))

    def _took(self, etag: str, started: float) -> None:
        with self._lock:
            self._etag = etag
            self._valid_until = started + self.ttl  # counted from before the write was sent
            self._lost = None

    def check(self) -> None:
        with self._lock:
            if self._lost:
                raise StoreBusy(self._lost)
            if time.monotonic() >= self._valid_until:
                raise StoreError(
                    f"the writer lease of {self.store.uri} could not be renewed for {self.ttl:g} s "
                    "(the store is unreachable); writes wait until it is"
                )

    def renew(self) -> None:
        """Extend the lease; raises StoreError (retry later) or StoreBusy (it was taken)."""
        started = time.monotonic()
        try:
            etag = self.store.put_if(WRITER_LOCK_KEY, self._body(), etag=self._etag)
        except PreconditionFailed:
            etag = self._ours()
            if etag is None:
                with self._lock:
                    self._lost = (
                        f"the writer lease of {self.store.uri} was taken by another controller "
                        "while this one could not renew it; this controller stopped writing"
                    )
                raise StoreBusy(self._lost) from None
        self._took(etag, started)

    def release(self) -> None:
        try:
            if self._ours() is not None:
                self.store.delete(WRITER_LOCK_KEY)
        except StoreError as exc:
            log.warning("could not release the writer lease: %s", exc)


def writer_lock(store: ObjectStore, ttl: float = DEFAULT_TTL) -> WriterLock:
    if isinstance(store, FileStore):
        return FileWriterLock(store, ttl)
    if isinstance(store, S3Store):
        return S3WriterLock(store, ttl)
    raise StoreError(f"no writer lease for a {type(store).__name__}")

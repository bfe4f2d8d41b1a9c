"""An object store that rides out outages: every call retried with backoff up to a deadline.

The S3 client retries a failed request for about 7 seconds on its own; an
object-store restart or a network blip lasts longer, and without more patience
a worker would lose the interval it just trained (its checkpoint upload fails)
or fail a member it could have trained (its download fails). Wrapped in
:class:`RetryingStore`, a call that fails with a transient error is tried again
after 0.5 s, 1 s, 2 s, … (at most 30 s apart) until ``retry_seconds`` after
it started, then fails with the last error. Meanwhile the worker's heartbeat
thread keeps its lease alive, so an outage shorter than the deadline costs
time, not work.

Not retried: a missing object (an answer, not an outage), a bad key, and S3
errors that no wait cures (access denied, no such bucket, bad credentials).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from controller_service.contract.store import ObjectNotFound, ObjectStore, StoreError

log = logging.getLogger("adaseg.store")

T = TypeVar("T")

DEFAULT_RETRY_SECONDS = 300.0
RETRY_SECONDS_ENV = "ADASEG_STORE_RETRY_SECONDS"  # the default of --store-retry-seconds

# S3 error codes that mean "never", not "not now"
_PERMANENT_S3_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "InvalidBucketName",
        "NoSuchBucket",
        "SignatureDoesNotMatch",
    }
)
# file-store errors no wait cures (a full disk or an I/O error may clear)
_PERMANENT_OS_ERRORS = (PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(error: BaseException) -> bool:
    """Whether waiting could make the failed store call succeed."""
    if isinstance(error, (ObjectNotFound, *_PERMANENT_OS_ERRORS)):
        return False
    if not isinstance(error, StoreError | OSError):
        return False
    code = getattr(error.__cause__, "code", None)  # minio's S3Error, kept as the cause
    return not (isinstance(code, str) and code in _PERMANENT_S3_CODES)


class RetryingStore(ObjectStore):
    """``inner`` with every call retried on transient errors for up to ``retry_seconds``.

    ``interrupt`` (e.g. the SIGTERM event) cuts a wait short: the call then fails
    at once with its last error. ``sleep_first``/``max_sleep`` shape the backoff.
    """

    def __init__(
        self,
        inner: ObjectStore,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        interrupt: threading.Event | None = None,
        sleep_first: float = 0.5,
        max_sleep: float = 30.0,
    ) -> None:
        if not retry_seconds >= 0:
            raise ValueError(f"retry_seconds must be >= 0, got {retry_seconds}")
        self.inner = inner
        self.uri = inner.uri
        self.retry_seconds = float(retry_seconds)
        self.interrupt = interrupt or threading.Event()
        self.sleep_first = sleep_first
        self.max_sleep = max_sleep

    def put(self, key: str, data: bytes) -> None:
        self._retry("put", key, lambda: self.inner.put(key, data))

    def get(self, key: str) -> bytes:
        return self._retry("get", key, lambda: self.inner.get(key))

    def exists(self, key: str) -> bool:
        return self._retry("stat", key, lambda: self.inner.exists(key))

    def list(self, prefix: str = "") -> list[str]:
        return self._retry("list", prefix, lambda: self.inner.list(prefix))

    def list_dirs(self, prefix: str) -> list[str]:
        return self._retry("list", prefix, lambda: self.inner.list_dirs(prefix))

    def delete(self, key: str) -> None:
        self._retry("delete", key, lambda: self.inner.delete(key))

    def check(self) -> None:
        self._retry("check", "", self.inner.check)

    def _retry(self, action: str, key: str, call: Callable[[], T]) -> T:
        started = time.monotonic()
        deadline = started + self.retry_seconds
        sleep, attempt = self.sleep_first, 0
        while True:
            attempt += 1
            try:
                return call()
            except (StoreError, OSError) as exc:
                if not is_transient(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0 or self.interrupt.is_set():
                    if attempt == 1:
                        raise
                    spent = time.monotonic() - started
                    raise StoreError(
                        f"{exc} (gave up after {attempt} attempts in {spent:.0f} s; "
                        f"--store-retry-seconds {self.retry_seconds:g})"
                    ) from exc
                wait = min(sleep, left)
                log.warning(
                    "store %s of %s failed (%s); retry %d in %.1f s, giving up in %.0f s",
                    action,
                    f"{self.uri.rstrip('/')}/{key}",
                    exc,
                    attempt,
                    wait,
                    left,
                )
                self.interrupt.wait(wait)
                sleep = min(sleep * 2, self.max_sleep)

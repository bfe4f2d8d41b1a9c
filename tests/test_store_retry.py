"""Store calls that ride out outages: retried with backoff up to a deadline, never for answers
that no wait changes. A real file store behind an injected outage; the S3 outage under a
training worker is in test_worker.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from controller_service.contract.store import FileStore, ObjectNotFound, StoreError
from trainer_image.jobs.store_retry import RetryingStore, is_transient


class S3Refusal(Exception):
    """What minio raises for an answer (its ``code``), kept as the StoreError's cause."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Outage(FileStore):
    """A real file store that is unreachable for its first ``failures`` calls."""

    def __init__(self, root: Path, failures: int, cause: BaseException | None = None) -> None:
        super().__init__(root)
        self.failures = failures
        self.cause = cause or ConnectionRefusedError("connection refused")
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise StoreError(f"S3 request failed: {self.cause}") from self.cause

    def put(self, key: str, data: bytes) -> None:
        self._maybe_fail()
        super().put(key, data)

    def get(self, key: str) -> bytes:
        self._maybe_fail()
        return super().get(key)


def retrying(inner: FileStore, seconds: float, **kw) -> RetryingStore:
    return RetryingStore(inner, seconds, sleep_first=0.01, max_sleep=0.05, **kw)


def test_an_outage_shorter_than_the_deadline_costs_time_not_the_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inner = Outage(tmp_path, failures=4)
    store = retrying(inner, seconds=30)
    store.put("a/b.bin", b"payload")
    assert inner.calls == 5 and inner.get("a/b.bin") == b"payload"
    assert store.uri == inner.uri and store.key_of(store.uri_of("a/b.bin")) == "a/b.bin"
    warnings = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(warnings) == 4 and "store put of" in warnings[0] and "a/b.bin" in warnings[0]


def test_past_the_deadline_the_last_error_is_raised_with_the_attempts(tmp_path: Path) -> None:
    inner = Outage(tmp_path, failures=10**6)
    store = retrying(inner, seconds=0.3)
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"connection refused \(gave up after \d+ attempts"):
        store.get("x")
    assert 0.3 <= time.monotonic() - started < 5 and inner.calls > 3


def test_zero_seconds_means_one_attempt(tmp_path: Path) -> None:
    inner = Outage(tmp_path, failures=1)
    with pytest.raises(StoreError, match="connection refused$"):
        retrying(inner, seconds=0).get("x")
    assert inner.calls == 1


@pytest.mark.parametrize("code", ["AccessDenied", "NoSuchBucket", "InvalidAccessKeyId"])
def test_answers_no_wait_changes_are_not_retried(tmp_path: Path, code: str) -> None:
    inner = Outage(tmp_path, failures=1, cause=S3Refusal(code))
    with pytest.raises(StoreError, match=code):
        retrying(inner, seconds=30).get("x")
    assert inner.calls == 1
    store = retrying(FileStore(tmp_path), seconds=30)
    with pytest.raises(ObjectNotFound):
        store.get("missing")
    assert not is_transient(PermissionError("read-only"))
    assert is_transient(OSError(28, "No space left on device"))
    assert is_transient(StoreError("x")) and not is_transient(ValueError("bad key"))


def test_a_missing_object_after_an_outage_is_still_a_missing_object(tmp_path: Path) -> None:
    inner = Outage(tmp_path, failures=2)
    with pytest.raises(ObjectNotFound):
        retrying(inner, seconds=30).get("missing")
    assert inner.calls == 3


def test_the_interrupt_cuts_the_waiting_short(tmp_path: Path) -> None:
    """SIGTERM during an outage: the worker stops within a backoff step, not the deadline."""
    inner = Outage(tmp_path, failures=10**6)
    stop = threading.Event()
    store = RetryingStore(inner, 300, interrupt=stop, sleep_first=0.05, max_sleep=0.05)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(StoreError, match="gave up after"):
        store.get("x")
    assert time.monotonic() - started < 2

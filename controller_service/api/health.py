"""Liveness that tells the truth, and the upkeep of the writer lease.

``/healthz`` fails (503) when the process can no longer make progress: a run's
lock or state write held past ``stuck_seconds``, the request thread pool unable
to run a no-op within a few seconds (every thread blocked), or the writer lease
lost to another controller. Kubernetes then restarts the pod; a restarted
controller reloads every run from the store, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from fastapi.concurrency import run_in_threadpool

from controller_service.contract.store import StoreError
from controller_service.runs import RunRepository
from controller_service.runs.ownership import StoreBusy, WriterLock

log = logging.getLogger(__name__)
THREADPOOL_PROBE_SECONDS = 5.0


class Liveness:
    def __init__(self, repository: RunRepository, writer: WriterLock, stuck_seconds: float) -> None:
        self.repository = repository
        self.writer = writer
        self.stuck_seconds = stuck_seconds

    async def problems(self) -> list[str]:
        found = self.repository.stuck(self.stuck_seconds)
        try:
            await asyncio.wait_for(run_in_threadpool(lambda: None), THREADPOOL_PROBE_SECONDS)
        except asyncio.TimeoutError:
            found.append(
                f"the request thread pool did not run a no-op within {THREADPOOL_PROBE_SECONDS:g} s"
            )
        try:
            self.writer.check()
        except StoreBusy as exc:
            found.append(str(exc))
        except StoreError:
            pass  # the store is unreachable: readiness says so; restarting would not help
        return found


class LeaseKeeper:
    """Renews the writer lease every ``interval`` seconds on a daemon thread."""

    def __init__(self, writer: WriterLock, interval: float) -> None:
        self.writer = writer
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="writer-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.writer.renew()
            except StoreBusy as exc:
                log.error("%s", exc)
                return
            except StoreError as exc:
                log.warning("could not renew the writer lease (will retry): %s", exc)

"""The lease heartbeat of a member job, from a background thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from controller_service.contract.client import ClientError, ControllerError

log = logging.getLogger("adaseg.worker")


class Heartbeat:
    """Extends the lease from a background thread while an assignment is worked on.

    Loading, evaluation and the checkpoint upload (with its retries through a
    store outage) take time too, so a per-step hook would not cover them. A
    heartbeat refused with a 4xx (the lease expired and was issued again) sets
    ``lost``: going on would only produce a report the controller refuses, so
    the worker abandons the assignment instead.
    """

    def __init__(self, beat: Callable[[], Any], interval: float, lost: threading.Event) -> None:
        self.beat = beat
        self.interval = max(0.05, interval)
        self.lost = lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except ClientError as exc:
                log.warning("lease lost (heartbeat refused: %s); abandoning the assignment", exc)
                self.lost.set()
                return
            except ControllerError as exc:  # transient: the controller may be restarting
                log.warning("heartbeat failed, will retry: %s", exc)

"""The lease heartbeat of a member job, from a background thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from controller_service.contract.client import ClientError, ControllerError

log = logging.getLogger("adaseg.worker")

MAX_IN_FLIGHT = 4  # beats awaiting an answer at once; more would only pile up threads


class Heartbeat:
    """Extends the lease from a background thread while an assignment is worked on.

    Loading, evaluation and the checkpoint upload (with its retries through a
    store outage) take time too, so a per-step hook would not cover them. A
    heartbeat refused with a 4xx (the lease expired and was issued again) sets
    ``lost``: going on would only produce a report the controller refuses, so
    the worker abandons the assignment instead.

    Beats leave on a fixed cadence, each on its own thread, without waiting for
    the previous answer: the controller extends the lease when a beat arrives
    but answers only once the extension is durable, and a store write that
    stalls (an fsync, a slow PUT) for longer than the lease must not hold back
    the next beat. Once the heartbeat has stopped, late answers change nothing.
    """

    def __init__(self, beat: Callable[[], Any], interval: float, lost: threading.Event) -> None:
        self.beat = beat
        self.interval = max(0.05, interval)
        self.lost = lost
        self._stop = threading.Event()
        self._verdict = threading.Lock()  # `lost` is set only while the heartbeat runs
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._verdict:
            self._stop.set()
        self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        in_flight: list[threading.Thread] = []
        while not self._stop.wait(self.interval):
            in_flight = [beat for beat in in_flight if beat.is_alive()]
            if self.lost.is_set():  # checked after pruning: a beat sets it before it ends
                return
            if len(in_flight) >= MAX_IN_FLIGHT:
                continue  # the controller is not answering; the beats waiting will tell
            beat = threading.Thread(target=self._beat_once, name="heartbeat-beat", daemon=True)
            beat.start()
            in_flight.append(beat)

    def _beat_once(self) -> None:
        try:
            self.beat()
        except ClientError as exc:
            with self._verdict:
                if self._stop.is_set():
                    return
                log.warning("lease lost (heartbeat refused: %s); abandoning the assignment", exc)
                self.lost.set()
        except ControllerError as exc:  # transient: the controller may be restarting
            if not self._stop.is_set():
                log.warning("heartbeat failed, will retry: %s", exc)

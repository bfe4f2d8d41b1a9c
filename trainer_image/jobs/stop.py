"""The stop flag of a trainer process: SIGTERM (pod eviction) or a lost lease."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("adaseg.worker")


class StopFlag:
    """Set by SIGTERM or by a lost lease; the training loop checks it every step
    (``engine.hooks.StopHook``), store retries stop waiting on it."""

    def __init__(self) -> None:
        self.terminated = threading.Event()
        self.lease_lost = threading.Event()

    def __call__(self) -> bool:
        return self.terminated.is_set() or self.lease_lost.is_set()

    @contextmanager
    def sigterm(self) -> Iterator[StopFlag]:
        """SIGTERM sets the flag while inside; the previous handler is restored on exit."""

        def on_sigterm(signum: int, frame: Any) -> None:
            log.warning("SIGTERM: stopping at the next step; the lease will expire unreported")
            self.terminated.set()

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

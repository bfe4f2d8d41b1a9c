"""Process helpers for running the method on one machine: the demo and the benchmarks.

``adaseg demo`` and ``bench/effectiveness/run.py`` both start a controller,
worker processes and trainers as child processes, and must stop every one of
them when the user presses Ctrl-C or the orchestrator itself is terminated.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class ChildProcesses:
    """Processes started by an orchestrator, each in its own session so Ctrl-C reaches
    the orchestrator first and it stops them in order (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], log: Path | None = None, **kwargs: Any
    ) -> subprocess.Popen:
        stdout: Any = kwargs.pop("stdout", None)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            stdout = open(log, "ab")  # noqa: SIM115 - owned by the child process
        proc = subprocess.Popen(
            list(argv),
            stdout=stdout,
            stderr=subprocess.STDOUT if log is not None else None,
            start_new_session=True,
            **kwargs,
        )
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], **kwargs: Any) -> None:
        """Run to completion in the foreground (its progress on our terminal)."""
        proc = self.start(argv, **kwargs)
        code = proc.wait()
        self.procs.remove(proc)
        if code != 0:
            raise RuntimeError(f"{' '.join(map(str, argv[:4]))} ... failed with exit code {code}")

    def reap(self) -> list[subprocess.Popen]:
        """The processes that have exited since the last call, forgotten from now on."""
        done = [proc for proc in self.procs if proc.poll() is not None]
        for proc in done:
            self.procs.remove(proc)
        return done

    def stop_all(self, grace: float = 10.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


@contextmanager
def child_processes() -> Iterator[ChildProcesses]:
    children = ChildProcesses()
    try:
        yield children
    finally:
        children.stop_all()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt, so an orchestrator that is itself a child
    (terminated by its parent) still runs its ``finally`` blocks and stops its children."""

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def adaseg(*args: str) -> list[str]:
    """argv for an `adaseg` sub-command in this interpreter (works without the script on PATH)."""
    return [sys.executable, "-m", "controller_service", *args]

"""The lease requests held for their run's next round, served together when it opens.

Lives on the event loop. A held request registers a future under its worker
name; when a round completes (the repository's thread calls
:meth:`RoundWaiters.round_completed`, which hops onto the loop), all the
registered workers of that run are leased in *one* transaction (``lease_many``:
one lock, one state write) instead of a herd of single leases. A request
registers *before* it checks for work once more, so a completion in between is
never missed (a worker leased twice gets its own assignment).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi.concurrency import run_in_threadpool


class RoundWaiters:
    def __init__(self, lease_many: Callable[[str, list[str]], dict[str, dict[str, Any]]]) -> None:
        self._lease_many = lease_many
        self._waiting: dict[str, dict[str, asyncio.Future[dict[str, Any]]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def register(self, run_id: str, worker: str) -> asyncio.Future[dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(run_id, {})[worker] = future
        return future

    def unregister(self, run_id: str, worker: str, future: asyncio.Future) -> None:
        waiting = self._waiting.get(run_id, {})
        if waiting.get(worker) is future:
            del waiting[worker]

    def round_completed(self, run_id: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch, run_id)

    def _dispatch(self, run_id: str) -> None:
        waiting = self._waiting.pop(run_id, {})
        if waiting:
            asyncio.ensure_future(self._serve(run_id, waiting))

    async def _serve(self, run_id: str, waiting: dict[str, asyncio.Future]) -> None:
        try:
            answers = await run_in_threadpool(self._lease_many, run_id, list(waiting))
        except Exception as exc:  # noqa: BLE001 - handed to every held request
            for future in waiting.values():
                if not future.done():
                    future.set_exception(exc)
            return
        for worker, future in waiting.items():
            if not future.done():
                future.set_result(answers[worker])

    @staticmethod
    async def wait(future: asyncio.Future, timeout: float) -> dict[str, Any] | None:
        """The answer served at the round's opening, or None after ``timeout``."""
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            return None

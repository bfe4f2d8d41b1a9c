"""The FastAPI application of the controller: assembly of the routers over the run repository.

A thin shell: routers translate JSON to calls of :class:`RunRepository` and its
errors to HTTP statuses (422 bad input, 404 unknown run or assignment, 409
conflict with the run's state, 503 store unavailable or run busy), always as
JSON ``{"detail": ...}``; no exception is left unanswered and none leaves a lock
held. Around the routes, outermost first: bearer token auth on ``/v1`` when a
token is configured (401), then a request-size limit (413); the probes
``/healthz``, ``/readyz`` and ``/metrics`` stay open.

Routes are plain ``def`` functions: FastAPI runs them in its thread pool, so
blocking store I/O never stalls the event loop. The lease route is the one
``async`` exception: a lease that finds every member leased or done is held on
the event loop (a long poll, holding no thread) until the round completes.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from controller_service.api.dependencies import Service, bearer_scheme
from controller_service.api.health import LeaseKeeper, Liveness
from controller_service.api.metrics import ServiceMetrics
from controller_service.api.middleware import BearerAuth, BodySizeLimit
from controller_service.api.routers import probes, runs, trainers, transfer
from controller_service.api.settings import Settings
from controller_service.api.waiters import RoundWaiters
from controller_service.contract import schemas
from controller_service.contract.store import ObjectStore, StoreError, open_store
from controller_service.runs import RunError, RunEvents, RunRepository
from controller_service.runs.ownership import WriterLock, writer_lock
from controller_service.ui import RepositoryRunSource, ui_router

log = logging.getLogger(__name__)
API_VERSION = "0.2.0"
WARM_UP_DELAY = 0.5  # seconds after startup before torch is imported in the background


class _Events(RunEvents):
    """The repository's events, to the metrics and to the held lease requests."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        self.waiters: RoundWaiters | None = None

    def lease_issued(self, reissued_expired: bool) -> None:
        self.metrics.lease_issued(reissued_expired)

    def report(self, outcome: str) -> None:
        self.metrics.report(outcome)

    def round_completed(self, run_id: str) -> None:
        self.metrics.round_completed(run_id)
        if self.waiters is not None:
            self.waiters.round_completed(run_id)


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors without the offending input: it may be NaN, which strict JSON
    cannot carry (echoing it would turn a 422 into a 500)."""
    return [
        {"loc": list(error.get("loc", ())), "msg": str(error.get("msg")), "type": error.get("type")}
        for error in exc.errors()
    ]


def _is_report(path: str) -> bool:
    """A report request, whose refusals count as ``adaseg_reports_total{outcome="rejected"}``."""
    return path.endswith("/report")


def _warm_up() -> None:
    """Import the maths (and torch) in the background: the service is ready at once,
    and the first run creation does not pay for the import."""
    for module in ("controller_service.search.ada_segment", "controller_service.search.ensemble"):
        importlib.import_module(module)


def _install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    @app.exception_handler(RunError)
    async def run_error(request: Request, exc: RunError) -> JSONResponse:
        if exc.status_code == 422:
            loc = ["body", *getattr(exc, "loc", ())]
            detail: Any = [
                {"loc": loc, "msg": getattr(exc, "msg", str(exc)), "type": "value_error"}
            ]
        else:
            detail = str(exc)
        return JSONResponse({"detail": detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if _is_report(request.url.path):
            metrics.report("rejected")
        return JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": f"store unavailable: {exc}"}, status_code=503)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        detail = f"internal error ({type(exc).__name__}); see the controller's log"
        return JSONResponse({"detail": detail}, status_code=500)


def create_app(
    settings: Settings | None = None,
    *,
    store: ObjectStore | None = None,
    clock: Callable[[], float] = time.time,
    writer: WriterLock | None = None,
) -> FastAPI:
    """The service for ``settings`` (default: from the environment); ``store``, ``clock``
    and ``writer`` replace what the settings would give (tests). Without ``writer``, the
    store's writer lease is taken here: a second controller on the same store raises
    :class:`~controller_service.runs.ownership.StoreBusy` naming the holder."""
    settings = settings or Settings.from_env()
    store = store or open_store(settings.store)
    if writer is None:
        writer = writer_lock(store, settings.writer_lease_seconds)
        writer.acquire(wait=1.5 * settings.writer_lease_seconds)
    metrics = ServiceMetrics()
    events = _Events(metrics)
    repository = RunRepository(store, clock=clock, events=events, writer=writer)
    waiters = events.waiters = RoundWaiters(repository.lease_many)
    metrics.track_runs(repository.summaries)
    liveness = Liveness(repository, writer, settings.stuck_seconds)
    keeper = LeaseKeeper(writer, settings.writer_lease_seconds / 3)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        waiters.bind(asyncio.get_running_loop())
        keeper.start()
        # after the socket is up, so the import does not compete with startup for the GIL
        warm_up = threading.Timer(WARM_UP_DELAY, _warm_up)
        warm_up.daemon = True
        warm_up.start()
        log.info(
            "controller ready: store %s, auth %s", store.uri, "on" if settings.token else "off"
        )
        try:
            yield
        finally:
            keeper.stop()
            writer.release()

    app = FastAPI(
        title="Ada-Segment controller",
        version=API_VERSION,
        description="Policy, run state machine and lease queue of Ada-Segment (REST API v1).",
        lifespan=lifespan,
    )
    app.state.service = Service(settings, store, repository, metrics, waiters, liveness)
    app.state.settings, app.state.repository, app.state.metrics = settings, repository, metrics

    def body_refused(path: str) -> None:
        if _is_report(path):
            metrics.report("rejected")

    # the last added runs first: auth (401) before the body limit (413), see the docstring
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, on_refused=body_refused)
    if settings.token:
        app.add_middleware(BearerAuth, token=settings.token)
    _install_error_handlers(app, metrics)

    errors = {status: {"model": schemas.ErrorResponse} for status in (401, 404, 409, 413, 422, 503)}
    if not settings.token:
        del errors[401]
    secured = [Depends(bearer_scheme)] if settings.token else []
    app.include_router(probes.router)
    for router in (runs.router, trainers.router, transfer.router):
        app.include_router(router, prefix="/v1", dependencies=secured, responses=errors)
    app.include_router(ui_router(RepositoryRunSource(repository), settings.token, clock=clock))
    return app

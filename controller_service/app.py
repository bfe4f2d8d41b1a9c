"""The FastAPI application of the controller: REST API v1 over :class:`RunRepository`.

A thin shell: routes translate JSON to calls of the run repository and its
errors to HTTP statuses (422 bad input, 404 unknown run or assignment, 409
conflict with the run's state, 503 store unavailable), always as JSON
``{"detail": ...}``. Around the routes, outermost first: bearer token auth on
``/v1`` when a token is configured (401), a request-size limit (413), and the
open probes ``/healthz`` (process alive), ``/readyz`` (store reachable) and
``/metrics``. Auth comes first so that a client without the token learns
nothing from the service (not even how it parses or limits bodies) and costs
it no body read.

Routes are plain ``def`` functions: FastAPI runs them in its thread pool, so
blocking store I/O never stalls the event loop, and the repository's per-run
locks serialise each run's read-modify-write. The lease route is the one
``async`` exception: a lease that finds every member leased or done is held on
the event loop (a long poll, holding no thread) until the round completes, so
waiting workers get the next round at once and do not poll the service.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller_service import schemas
from controller_service.metrics import ServiceMetrics
from controller_service.runs import MemberReport, RunError, RunEvents, RunRepository, RunSpec
from controller_service.settings import Settings
from controller_service.store import ObjectStore, StoreError, open_store
from controller_service.ui import RepositoryRunSource, ui_router

log = logging.getLogger(__name__)
API_VERSION = "0.1.0"
WARM_UP_DELAY = 0.5  # seconds after startup before torch is imported in the background
PROTECTED_PREFIX = "/v1"  # the API; probes, metrics and the docs stay open


class BearerAuth:
    """ASGI middleware: 401 on ``/v1`` unless ``Authorization: Bearer <token>`` matches.

    Pure ASGI and outside everything else, so the check runs before any body is
    read or parsed: a request without the token gets 401, never a 413 or a 422
    that would tell an unauthenticated client how its body was judged. The
    comparison is constant-time (``hmac.compare_digest``) so response times do
    not leak the token. Paths outside ``/v1`` pass untouched.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = token.encode()

    def _allowed(self, scope: Scope) -> bool:
        raw = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, given = raw.partition(b" ")
        # compare even when the scheme is wrong, so both refusals take the same time
        matches = hmac.compare_digest(given, self._expected)
        return scheme.lower() == b"bearer" and matches

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        protected = path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")
        if protected and not self._allowed(scope):
            response = JSONResponse(
                {"detail": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over ``max_bytes``, by Content-Length and as streamed.

    The body is read here (it is at most ``max_bytes``) and replayed to the app,
    so a chunked upload without Content-Length is limited too. ``on_refused(path)``
    is told of each refusal (the service counts refused reports in its metrics).
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, on_refused: Callable[[str], None] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.on_refused is not None:
            self.on_refused(scope.get("path", ""))
        detail = f"request body larger than {self.max_bytes} bytes (ADASEG_MAX_BODY_BYTES)"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


class RoundWaiters:
    """The lease requests held for their run's next round, served together when it opens.

    Lives on the event loop. A held request registers a future under its worker
    name; when a round completes (the repository's thread calls
    :meth:`round_completed`, which hops onto the loop), all the registered
    workers of that run are leased in *one* transaction (``lease_many``: one
    lock, one state write) instead of a herd of single leases. A request
    registers *before* it checks for work once more, so a completion in
    between is never missed (a worker leased twice gets its own assignment).
    """

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


# Documentation only: puts the bearer scheme into /openapi.json and /docs. It never
# refuses anything (auto_error=False); BearerAuth does the check, before the body is read.
_bearer_scheme = HTTPBearer(auto_error=False, description="ADASEG_TOKEN, when the service has one")


def _is_report(path: str) -> bool:
    """A report request, whose refusals count as ``adaseg_reports_total{outcome="rejected"}``."""
    return path.endswith("/report")


def _warm_up() -> None:
    """Import the maths (and torch) in the background: the service is ready at once,
    and the first run creation does not pay for the import."""
    for module in ("controller_service.policy", "controller_service.ensemble"):
        importlib.import_module(module)


def create_app(
    settings: Settings | None = None,
    *,
    store: ObjectStore | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The service for ``settings`` (default: from the environment); ``store`` and ``clock``
    replace the ones the settings would give (tests). A lease that finds no work is held
    up to ``settings.lease_hold_seconds`` for the round to complete before it answers
    ``wait``."""
    settings = settings or Settings.from_env()
    lease_hold_seconds = settings.lease_hold_seconds
    store = store or open_store(settings.store)
    metrics = ServiceMetrics()
    events = _Events(metrics)
    repository = RunRepository(store, clock=clock, events=events)
    waiters = events.waiters = RoundWaiters(repository.lease_many)
    metrics.track_runs(repository.summaries)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        waiters.bind(asyncio.get_running_loop())
        # after the socket is up, so the import does not compete with startup for the GIL
        warm_up = threading.Timer(WARM_UP_DELAY, _warm_up)
        warm_up.daemon = True
        warm_up.start()
        log.info(
            "controller ready: store %s, auth %s", store.uri, "on" if settings.token else "off"
        )
        yield

    app = FastAPI(
        title="Ada-Segment controller",
        version=API_VERSION,
        description="Policy, run state machine and lease queue of Ada-Segment (REST API v1).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.repository = repository
    app.state.metrics = metrics

    def body_refused(path: str) -> None:
        if _is_report(path):
            metrics.report("rejected")

    # the last added runs first: auth (401) before the body limit (413), see the docstring
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, on_refused=body_refused)
    if settings.token:
        app.add_middleware(BearerAuth, token=settings.token)

    errors = {
        status: {"model": schemas.ErrorResponse} for status in (400, 401, 404, 409, 413, 422, 503)
    }

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

    # -- open probes ---------------------------------------------------------------------------

    @app.get("/healthz", response_model=schemas.Status, tags=["probes"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=schemas.Status, responses=errors, tags=["probes"])
    def readyz() -> dict[str, str]:
        store.check()  # StoreError -> 503
        return {"status": "ready"}

    @app.get("/metrics", tags=["probes"], response_class=Response)
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- v1 ------------------------------------------------------------------------------------

    v1 = APIRouter(
        prefix=PROTECTED_PREFIX, dependencies=[Depends(_bearer_scheme)], responses=errors
    )

    @v1.post("/runs", status_code=201, response_model=schemas.RunRecord, tags=["runs"])
    def create_run(body: schemas.CreateRunRequest) -> dict[str, Any]:
        return repository.create(RunSpec(**body.model_dump()))

    @v1.get("/runs", response_model=list[schemas.RunRecord], tags=["runs"])
    def list_runs() -> list[dict[str, Any]]:
        return repository.list()

    @v1.get("/runs/{run_id}", response_model=schemas.RunRecord, tags=["runs"])
    def get_run(run_id: str) -> dict[str, Any]:
        return repository.get(run_id)

    @v1.post(
        "/runs/{run_id}/leases",
        response_model=schemas.LeaseResponse,
        response_model_exclude_none=True,
        tags=["trainers"],
    )
    async def lease(run_id: str, body: schemas.LeaseRequest) -> JSONResponse:
        """Long poll: while every member is leased or done, the request is held (no thread
        is) until the round completes or ``retry_after`` passes, up to the hold time; then
        it answers ``wait``. The time held is in the ``Server-Timing`` header."""
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def attempt() -> dict[str, Any]:
            return await run_in_threadpool(repository.lease, run_id, body.worker)

        answer = await attempt()  # 404 for unknown runs before anything is registered
        first_answer, held = loop.time(), answer["state"] == "wait"
        while answer["state"] == "wait":
            remaining = lease_hold_seconds - (loop.time() - began)
            if remaining <= 0:
                break
            future = waiters.register(run_id, body.worker)
            try:
                answer = await attempt()
                if answer["state"] == "wait":
                    served = await waiters.wait(future, min(answer["retry_after"], remaining))
                    # None: retry_after passed (a lease may have expired): look again
                    answer = served if served is not None else await attempt()
            finally:
                waiters.unregister(run_id, body.worker, future)
        held_ms = (loop.time() - first_answer) * 1000.0 if held else 0.0
        headers = {"Server-Timing": f"hold;dur={held_ms:.1f}"}
        return JSONResponse(answer, headers=headers)  # the schema documents it: no re-validation

    @v1.post(
        "/runs/{run_id}/assignments/{assignment_id}/heartbeat",
        response_model=schemas.HeartbeatResponse,
        tags=["trainers"],
    )
    def heartbeat(run_id: str, assignment_id: str) -> JSONResponse:
        return JSONResponse(repository.heartbeat(run_id, assignment_id))

    @v1.post(
        "/runs/{run_id}/assignments/{assignment_id}/report",
        response_model=schemas.ReportResponse,
        tags=["trainers"],
    )
    def report(run_id: str, assignment_id: str, body: schemas.ReportRequest) -> JSONResponse:
        answer = repository.report(run_id, assignment_id, MemberReport(**body.model_dump()))
        return JSONResponse(answer)

    @v1.get("/runs/{run_id}/policy", response_model=schemas.PolicyDocument, tags=["transfer"])
    def policy(run_id: str) -> dict[str, Any]:
        return repository.policy(run_id)

    @v1.post("/runs/{run_id}/weights", response_model=schemas.WeightsResponse, tags=["transfer"])
    def weights(run_id: str, body: schemas.WeightsRequest) -> dict[str, Any]:
        return repository.weights(
            run_id, body.losses, body.epoch, body.epochs, body.mode, body.gamma
        )

    app.include_router(v1)
    # the dashboard: outside /v1 (BearerAuth lets it through), guarded by the same token itself
    app.include_router(ui_router(RepositoryRunSource(repository), settings.token, clock=clock))
    return app

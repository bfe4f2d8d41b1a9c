"""The dashboard's routes under ``/ui``: thin glue from a RunSource to the page renderers.

``GET /ui/`` lists the runs, ``GET /ui/runs/{run}`` shows one,
``GET /ui/runs/{run}/policy`` its transfer weights (Eq. 7); ``/ui/login``
(form, POST) and ``/ui/logout`` (POST) handle the token (see
:mod:`controller_service.ui.auth`). Read-only: the pages never change a run.
Routes are plain ``def``: the source may block (store reads), so they run in
FastAPI's thread pool. A page a request may not see answers 401 with the login
form. Transfer plans are cached per run and snapshot count: snapshots never
change once written, and Eq. 7 over T snapshots for T epochs is O(T²).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from controller_service.ui import pages
from controller_service.ui.auth import COOKIE_NAME, COOKIE_PATH, UiAuth, safe_next
from controller_service.ui.model import RunSource
from controller_service.ui.plan import TransferPlan, transfer_plan

PLAN_CACHE_SIZE = 32
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": pages.CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class _PlanCache:
    """The last few transfer plans, by (run, number of snapshots)."""

    def __init__(self, size: int = PLAN_CACHE_SIZE) -> None:
        self._plans: OrderedDict[tuple[str, int], TransferPlan | None] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, key: tuple[str, int], compute: Callable[[], TransferPlan | None]):
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
        plan = compute()  # outside the lock: two requests may both compute, both right
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > self._size:
                self._plans.popitem(last=False)
        return plan


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers=HEADERS)


def ui_router(
    source: RunSource, token: str | None, *, clock: Callable[[], float] = time.time
) -> APIRouter:
    """The ``/ui`` pages over ``source``; ``token`` (the service's, or None) guards them."""
    auth = UiAuth(token)
    plans = _PlanCache()
    router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False)

    def refused(request: Request) -> HTMLResponse | None:
        """None when the request may see the page, else the login form (401)."""
        authorization = request.headers.get("authorization")
        if auth.allowed(authorization, request.cookies.get(COOKIE_NAME), clock()):
            return None
        return _html(pages.login_page(safe_next(request.url.path)), 401)

    def signed_in(request: Request) -> bool:
        """Show 'sign out' only to a browser session (a bearer header cannot sign out)."""
        return auth.enabled and COOKIE_NAME in request.cookies

    @router.get("/")
    def runs(request: Request) -> Response:
        if (answer := refused(request)) is not None:
            return answer
        return _html(pages.runs_page(source.list_runs(), clock(), signed_in=signed_in(request)))

    @router.get("/runs/{run_id}")
    def run(request: Request, run_id: str) -> Response:
        if (answer := refused(request)) is not None:
            return answer
        try:
            info = source.run(run_id)
            rounds = source.rounds(run_id)
            open_round = source.open_round(run_id)
        except LookupError:
            return _html(pages.error_page(f"no run {run_id!r}", signed_in=signed_in(request)), 404)
        page = pages.run_page(info, rounds, open_round, clock(), signed_in=signed_in(request))
        return _html(page)

    @router.get("/runs/{run_id}/policy")
    def policy(request: Request, run_id: str) -> Response:
        if (answer := refused(request)) is not None:
            return answer
        try:
            info = source.run(run_id)
            document = source.policy(run_id)
            rounds = source.rounds(run_id)
        except LookupError:
            return _html(pages.error_page(f"no run {run_id!r}", signed_in=signed_in(request)), 404)
        plan = None
        if document is not None:
            count = len(document.get("snapshots") or [])
            plan = plans.get((run_id, count), lambda: transfer_plan(document, rounds))
        page = pages.policy_page(info, document, rounds, plan, signed_in=signed_in(request))
        return _html(page)

    @router.get("/login")
    def login_form(request: Request, next: str | None = None) -> Response:  # noqa: A002
        if not auth.enabled:
            return RedirectResponse(safe_next(next), status_code=303)
        return _html(pages.login_page(safe_next(next)))

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        target = safe_next((form.get("next") or [None])[0])
        if not auth.enabled:
            return RedirectResponse(target, status_code=303)
        if not auth.token_matches(given):
            return _html(pages.login_page(target, "That is not this controller's token."), 401)
        response = RedirectResponse(target, status_code=303, headers=HEADERS)
        response.set_cookie(
            COOKIE_NAME,
            auth.session_cookie(clock()),
            max_age=auth.session_seconds,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout")
    def logout() -> Response:
        response = RedirectResponse(f"{COOKIE_PATH}/login", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="strict")
        return response

    return router

"""Python client of the controller's REST API v1, for trainers, pipelines, the demo and
external training loops. Answers are the typed models of
:mod:`controller_service.contract.schemas`; path parameters are URL-encoded.

Connection errors and 5xx answers are retried with exponential backoff
(``backoff * 2**k`` seconds, ``retries`` times): the controller may be
restarting, and the calls are safe to repeat — a repeated report is accepted
once, and a worker that leases again gets the assignment it already holds.
Only run creation is not repeated after a timeout (it could create a second
run); it is retried when the connection was refused. 4xx answers raise at once,
with the server's ``detail`` in the message:

* :class:`NotFound` (404: unknown run or assignment),
* :class:`Conflict` (409: e.g. a report on a lease that was issued again),
* :class:`Unauthorized` (401: missing or wrong token),
* :class:`ClientError` (any other 4xx, e.g. 422 with the offending field).

:class:`ServerUnavailable` means the controller could not be reached (or kept
answering 5xx) after all retries.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from controller_service.contract import schemas
from controller_service.search.options import DEFAULT_GAMMA, DEFAULT_TRANSFER_MODE

Model = TypeVar("Model", bound=BaseModel)


class ControllerError(Exception):
    """Base of every error this client raises."""


class ClientError(ControllerError):
    """The controller refused the request (4xx); ``detail`` is its explanation."""

    def __init__(self, status_code: int, detail: Any, method: str = "", url: str = "") -> None:
        self.status_code = status_code
        self.detail = detail
        where = f" {method} {url}" if method else ""
        super().__init__(f"{status_code}{where}: {_describe(detail)}")


class NotFound(ClientError):
    """404: no such run or assignment."""


class Conflict(ClientError):
    """409: the request contradicts the run's state (stale lease, failed run, no snapshot yet)."""


class Unauthorized(ClientError):
    """401: the controller wants a bearer token (ADASEG_TOKEN) and got none or a wrong one."""


class ServerUnavailable(ControllerError):
    """Connection errors or 5xx answers after every retry."""


# The first run creation after a start may wait for the service's one-time import of
# the maths (torch); it is not retried after a timeout, so it gets a longer one.
CREATE_TIMEOUT = 60.0
MAX_BACKOFF = 5.0  # seconds between two attempts, at most

_ERRORS: dict[int, type[ClientError]] = {401: Unauthorized, 404: NotFound, 409: Conflict}


def _describe(detail: Any) -> str:
    """Pydantic-style error lists as ``field.path: message``; anything else as is."""
    if isinstance(detail, list) and all(isinstance(e, dict) for e in detail):
        parts = []
        for error in detail:
            loc = [str(part) for part in error.get("loc", ()) if part != "body"]
            parts.append(f"{'.'.join(loc)}: {error.get('msg')}" if loc else str(error.get("msg")))
        return "; ".join(parts)
    return str(detail)


class ControllerClient:
    """A connection to one controller, e.g. ``ControllerClient("http://127.0.0.1:8080")``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 5,
        backoff: float = 0.2,
        retry_seconds: float | None = None,
    ) -> None:
        """``retries`` attempts after the first, backoff doubling from ``backoff`` s; with
        ``retry_seconds``, attempts go on (backoff capped at 5 s) until that much time has
        passed since the first, whatever ``retries`` says: what a trainer wants, whose
        report must survive a controller restart or a store outage the controller is
        riding out (both answer 503 until they are over)."""
        self.base_url = base_url.rstrip("/")
        self.retry_seconds = retry_seconds
        token = token if token is not None else os.environ.get("ADASEG_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries = retries
        self.backoff = backoff
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        retries: int | None = None,
        idempotent: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """One API call with retries. A non-idempotent call (run creation) is retried only
        when the request surely did not arrive (connection refused), never after a timeout."""
        retries = self.retries if retries is None else retries
        # allow_nan: a NaN loss must reach the server and be refused there, by name
        content = json.dumps(body, allow_nan=True).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else {}
        last: str = ""
        began = time.monotonic()
        attempt = -1
        while self._another(attempt := attempt + 1, retries, began):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF))
            try:
                response = self._http.request(
                    method,
                    path,
                    content=content,
                    headers=headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                if idempotent or isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                    continue
                raise ServerUnavailable(
                    f"{method} {self.base_url}{path}: {last}; not retried because the "
                    "request may have been processed (check list_runs before creating again)"
                ) from exc
            if response.status_code >= 500:
                last = f"{response.status_code}: {_detail(response)}"
                continue
            if response.status_code >= 400:
                error = _ERRORS.get(response.status_code, ClientError)
                raise error(response.status_code, _detail(response), method, path)
            return response.json()
        raise ServerUnavailable(
            f"{method} {self.base_url}{path} failed after {attempt} attempts: {last}"
        )

    def _another(self, attempt: int, retries: int, began: float) -> bool:
        """Whether attempt number ``attempt`` (0 = the first) may be made."""
        if attempt == 0:
            return True
        if self.retry_seconds is not None:
            return time.monotonic() - began < self.retry_seconds
        return attempt <= retries

    def _call(
        self, model: type[Model], method: str, path: str, body: Any = None, **kw: Any
    ) -> Model:
        return model.model_validate(self._request(method, path, body, **kw))

    # -- API --

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until ``/readyz`` answers 200 (the service is up and its store reachable)."""
        deadline = time.monotonic() + timeout
        delay = min(self.backoff, 0.1) or 0.05
        while True:
            try:
                self._request("GET", "/readyz", retries=0)
                return
            except ServerUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise ServerUnavailable(
                        f"controller at {self.base_url} not ready after {timeout:g} s: {exc}"
                    ) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def create_run(self, loss_names: Sequence[str], **options: Any) -> schemas.RunRecord:
        """``options``: the fields of :class:`~controller_service.contract.schemas.CreateRunRequest`
        (strategy, population, rounds, sigma, ..., name)."""
        body = {"loss_names": list(loss_names), **options}
        timeout = max(self._timeout, CREATE_TIMEOUT)
        return self._call(
            schemas.RunRecord, "POST", "/v1/runs", body, idempotent=False, timeout=timeout
        )

    def get_run(self, run_id: str, history: bool = False) -> schemas.RunRecord:
        """The run; with ``history`` every completed round too (large for long runs:
        :meth:`rounds` reads them in ranges)."""
        query = "?history=true" if history else ""
        return self._call(schemas.RunRecord, "GET", f"/v1/runs/{_q(run_id)}{query}")

    def list_runs(self) -> list[schemas.RunRecord]:
        return _RUNS.validate_python(self._request("GET", "/v1/runs"))

    def rounds(
        self, run_id: str, start: int = 0, stop: int | None = None
    ) -> list[schemas.RoundRecord]:
        """The completed rounds ``start..stop-1`` (round 0 is the pseudo epoch)."""
        query = f"?start={int(start)}" + (f"&stop={int(stop)}" if stop is not None else "")
        return _ROUNDS.validate_python(self._request("GET", f"/v1/runs/{_q(run_id)}/rounds{query}"))

    def round(self, run_id: str, round_: int, metrics: bool = False) -> schemas.RoundRecord:
        query = "?metrics=true" if metrics else ""
        path = f"/v1/runs/{_q(run_id)}/rounds/{int(round_)}{query}"
        return self._call(schemas.RoundRecord, "GET", path)

    def open_round(self, run_id: str) -> schemas.OpenRound:
        """The open round's members, workers and deadlines (Conflict when none is open)."""
        return self._call(schemas.OpenRound, "GET", f"/v1/runs/{_q(run_id)}/rounds/current")

    def lease(self, run_id: str, worker: str) -> schemas.LeaseResponse:
        """``state`` is ``assigned`` (with ``assignment``), ``wait`` (with ``retry_after``) or
        ``finished``. While every member is busy the service holds the call (up to 5 s) and
        answers as soon as the next round opens. Leasing again while holding an assignment
        returns that assignment: use one worker name per trainer process."""
        path = f"/v1/runs/{_q(run_id)}/leases"
        return self._call(schemas.LeaseResponse, "POST", path, {"worker": worker})

    def heartbeat(self, run_id: str, assignment_id: str) -> schemas.HeartbeatResponse:
        return self._call(
            schemas.HeartbeatResponse, "POST", _assignment(run_id, assignment_id, "heartbeat")
        )

    def report(
        self,
        run_id: str,
        assignment_id: str,
        losses: Mapping[str, float],
        pq: float,
        checkpoint_uri: str,
        metrics: Mapping[str, Any] | None = None,
    ) -> schemas.ReportResponse:
        """Report a trained member; ``state`` in the answer is ``accepted`` or ``duplicate``."""
        body: dict[str, Any] = {
            "losses": {name: float(value) for name, value in losses.items()},
            "pq": float(pq),
            "checkpoint_uri": checkpoint_uri,
        }
        if metrics is not None:
            body["metrics"] = dict(metrics)
        return self._report(run_id, assignment_id, body)

    def report_diverged(
        self, run_id: str, assignment_id: str, reason: str
    ) -> schemas.ReportResponse:
        """Report a member whose loss went non-finite: reward -1, never the best, not retried."""
        return self._report(run_id, assignment_id, {"diverged": True, "reason": reason})

    def report_failed(self, run_id: str, assignment_id: str, reason: str) -> schemas.ReportResponse:
        """Report that this trainer could not train the member (unreadable checkpoint or data,
        store errors): the member is issued again, up to the run's ``max_attempts``."""
        return self._report(run_id, assignment_id, {"failed": True, "reason": reason})

    def _report(
        self, run_id: str, assignment_id: str, body: dict[str, Any]
    ) -> schemas.ReportResponse:
        return self._call(
            schemas.ReportResponse, "POST", _assignment(run_id, assignment_id, "report"), body
        )

    def weights(
        self,
        run_id: str,
        losses: Mapping[str, float] | None,
        epoch: int,
        epochs: int,
        mode: str = DEFAULT_TRANSFER_MODE,
        gamma: float = DEFAULT_GAMMA,
    ) -> schemas.WeightsResponse:
        """Transfer weights (Eq. 7 or a static mode) for the epoch after ``epoch``."""
        body: dict[str, Any] = {"epoch": epoch, "epochs": epochs, "mode": mode, "gamma": gamma}
        body["losses"] = (
            {name: float(value) for name, value in losses.items()} if losses is not None else None
        )
        return self._call(schemas.WeightsResponse, "POST", f"/v1/runs/{_q(run_id)}/weights", body)

    def policy(self, run_id: str) -> schemas.PolicyDocument:
        """Every policy snapshot as plain lists (``adaseg-policy/v1``)."""
        return self._call(schemas.PolicyDocument, "GET", f"/v1/runs/{_q(run_id)}/policy")


_RUNS = TypeAdapter(list[schemas.RunRecord])
_ROUNDS = TypeAdapter(list[schemas.RoundRecord])


def _q(segment: str) -> str:
    """A path segment, URL-encoded: a run id like ``../runs`` stays one segment."""
    return quote(str(segment), safe="")


def _assignment(run_id: str, assignment_id: str, verb: str) -> str:
    return f"/v1/runs/{_q(run_id)}/assignments/{_q(assignment_id)}/{verb}"


def _detail(response: httpx.Response) -> Any:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    return payload.get("detail", payload) if isinstance(payload, dict) else payload

"""ASGI middleware of the service: the bearer token and the request-size limit.

Both are pure ASGI and sit outside FastAPI, so they act before any body is read
or parsed: a request without the token gets 401, never a 413 or a 422 that
would tell an unauthenticated client how its body was judged.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROTECTED_PREFIX = "/v1"  # the API; probes, metrics and the docs stay open


def token_matches(given: bytes | str, expected: bytes) -> bool:
    """Constant-time comparison, so response times do not leak the token."""
    given_bytes = given.encode() if isinstance(given, str) else given
    return hmac.compare_digest(given_bytes, expected)


def bearer_of(scope: Scope) -> tuple[bytes, bytes]:
    """(scheme, credentials) of the request's Authorization header."""
    raw = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
    scheme, _, given = raw.partition(b" ")
    return scheme.lower(), given


class BearerAuth:
    """401 on ``/v1`` unless ``Authorization: Bearer <token>`` matches; other paths pass
    (the dashboard under ``/ui`` applies the same rule itself, with a cookie option)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = token.encode()

    def _allowed(self, scope: Scope) -> bool:
        scheme, given = bearer_of(scope)
        # compare even when the scheme is wrong, so both refusals take the same time
        matches = token_matches(given, self._expected)
        return scheme == b"bearer" and matches

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
    """413 for bodies over ``max_bytes``, by Content-Length and as streamed.

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

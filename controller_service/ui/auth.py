"""The dashboard's token rule: the same token as ``/v1``, never in a URL.

When the service has a token (``ADASEG_TOKEN``), a page is shown to a request
that carries ``Authorization: Bearer <token>`` (scripts, curl) or the session
cookie that the login form sets after the token was typed once (browsers). The
cookie holds no token: it is ``<expiry>.<HMAC-SHA256 of the expiry keyed by the
token>``, so it expires by itself, becomes invalid when the token changes,
and lets nobody who reads it call ``/v1``. It is HttpOnly (no script reads
it), SameSite=Strict (no other site's page sends it) and scoped to ``/ui``.
Every comparison is constant-time. Without a token every page is open.
Pure: the caller passes the header, the cookie and the time.
"""

from __future__ import annotations

import hashlib
import hmac

COOKIE_NAME = "adaseg_ui"
COOKIE_PATH = "/ui"
SESSION_SECONDS = 12 * 3600  # a working day of watching a run; then the token is asked again


class UiAuth:
    """Checks a request's credentials against the service's token (None: no auth)."""

    def __init__(self, token: str | None, session_seconds: int = SESSION_SECONDS) -> None:
        self._token = token.encode() if token else None
        self.session_seconds = session_seconds

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def token_matches(self, given: str) -> bool:
        """The typed token is the service's (constant-time)."""
        if self._token is None:
            return True
        return hmac.compare_digest(given.encode(), self._token)

    def bearer_matches(self, authorization: str | None) -> bool:
        """``Authorization: Bearer <token>``, as on ``/v1``."""
        if self._token is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        matches = hmac.compare_digest(given.encode(), self._token)  # even for a wrong scheme
        return scheme.lower() == "bearer" and matches

    def _mac(self, expires: int) -> str:
        assert self._token is not None
        message = f"adaseg-ui-session:{expires}".encode()
        return hmac.new(self._token, message, hashlib.sha256).hexdigest()

    def session_cookie(self, now: float) -> str:
        """The cookie value for a session starting at ``now``."""
        expires = int(now) + self.session_seconds
        return f"{expires}.{self._mac(expires)}"

    def cookie_matches(self, value: str | None, now: float) -> bool:
        if self._token is None:
            return True
        expires_text, _, mac = (value or "").partition(".")
        expires = int(expires_text) if expires_text.isdigit() else 0
        matches = hmac.compare_digest(mac.encode(), self._mac(expires).encode())
        return matches and now < expires

    def allowed(self, authorization: str | None, cookie: str | None, now: float) -> bool:
        """A page may be shown to this request."""
        return self.bearer_matches(authorization) or self.cookie_matches(cookie, now)


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a dashboard path on this site, nothing else."""
    if (
        isinstance(path, str)
        and path.startswith(COOKIE_PATH + "/")
        and not path.startswith("//")
        and "\\" not in path
        and all(32 < ord(ch) < 127 for ch in path)
    ):
        return path
    return COOKIE_PATH + "/"

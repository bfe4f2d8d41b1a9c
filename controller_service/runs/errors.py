"""What the run state machine refuses, with the HTTP status each refusal answers."""

from __future__ import annotations

from collections.abc import Sequence


class RunError(Exception):
    """A request the state machine refuses; ``status_code`` is the HTTP status to answer."""

    status_code = 400


class RunInputError(RunError, ValueError):
    """Bad input (422); ``loc`` names the offending field, e.g. ``("losses", "semantic")``."""

    status_code = 422

    def __init__(self, loc: Sequence[str | int], msg: str) -> None:
        self.loc = tuple(loc)
        self.msg = msg
        super().__init__(f"{'.'.join(map(str, self.loc))}: {msg}" if self.loc else msg)


class RunNotFound(RunError, LookupError):
    """Unknown run or assignment (404)."""

    status_code = 404


class RunConflict(RunError):
    """The request is well formed but contradicts the run's state (409)."""

    status_code = 409


class RunBusy(RunError):
    """The run could not be served in time (503; the request changed nothing, retry)."""

    status_code = 503

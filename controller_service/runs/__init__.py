"""The run lifecycle of a search: spec, state, transitions, views and the store-backed repository.

``spec`` checks a run's settings; ``state`` is the typed, immutable state;
``reports`` checks what trainers report; ``transitions`` is the state machine
(pure: leases, heartbeats, reports, round completion through a search strategy);
``views`` are the API's read models; ``persist`` is the storage layout of a
state (a base and a log); ``repository`` is the thin, transactional shell around
them; ``ownership`` is the controller's writer lease on its store.
"""

from controller_service.runs.errors import (
    RunBusy,
    RunConflict,
    RunError,
    RunInputError,
    RunNotFound,
)
from controller_service.runs.reports import MemberReport
from controller_service.runs.repository import RunEvents, RunRepository
from controller_service.runs.spec import PAPER_SETTINGS, RunSpec

__all__ = [
    "PAPER_SETTINGS",
    "MemberReport",
    "RunBusy",
    "RunConflict",
    "RunError",
    "RunEvents",
    "RunInputError",
    "RunNotFound",
    "RunRepository",
    "RunSpec",
]

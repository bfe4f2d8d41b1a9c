"""What the dashboard reads: the :class:`RunSource` protocol and the shapes it returns.

The pages depend on this protocol only, never on the run repository, so the
repository can change shape (or a new strategy can arrive) by re-implementing
one small adapter (:mod:`controller_service.ui.source`). Every shape is plain
JSON-like data, the same as the REST API's run record where the two overlap
(``RoundRecord`` is an item of ``history``, ``Candidate`` one of its
``candidates``), so an adapter can pass the records through without copying.

Timestamps are seconds since the epoch. Loss vectors are ``{loss name: value}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypedDict

try:  # Python 3.11+
    from typing import NotRequired
except ImportError:  # pragma: no cover - Python 3.10
    from typing_extensions import NotRequired

DEFAULT_STRATEGY = "ada-segment"  # a run record without a ``strategy`` field is one of these
OPEN_STATUS = "running"  # the one run status under which the pages refresh themselves

LossVector = Mapping[str, float]


class RunSummary(TypedDict):
    """One line of the runs list."""

    id: str
    name: str | None
    status: str  # running | finished | failed
    strategy: str
    round: int  # the open round (0 = pseudo epoch); T when finished
    rounds: int  # T
    best_pq: float | None
    created_at: float
    updated_at: float


class RunInfo(TypedDict):
    """One run without its history: the REST API's run record minus ``history``."""

    id: str
    name: str | None
    status: str
    failure: str | None
    strategy: str
    round: int
    rounds: int
    population: int
    loss_names: Sequence[str]
    config: Mapping[str, Any]
    created_at: float
    updated_at: float
    initial_losses: LossVector | None
    best: Mapping[str, Any] | None  # {round, member, pq, losses, weights, checkpoint_uri}


class Candidate(TypedDict):
    """A member of a completed round; ``valid: false`` is a rejected draw (member, weights)."""

    member: int
    weights: LossVector
    valid: bool
    pq: NotRequired[float | None]
    losses: NotRequired[LossVector | None]
    reward: NotRequired[float | None]
    diverged: NotRequired[bool]
    reason: NotRequired[str | None]
    worker: NotRequired[str | None]
    attempts: NotRequired[int]
    checkpoint_uri: NotRequired[str | None]


class RoundRecord(TypedDict):
    """A completed round, as in the run record's ``history``."""

    round: int
    mean_weights: LossVector | None  # None for strategies without a policy (e.g. PBT)
    candidates: Sequence[Candidate]  # trained members in member order, then invalid draws
    invalid_draws: int
    best_member: int | None  # the broadcast member; None when every member diverged
    init_checkpoint_uri: str  # what every member of the round started from
    input_losses: LossVector | None


class OpenMember(TypedDict):
    """A member of the open round and its lease."""

    member: int
    status: str  # pending | leased | done | failed
    worker: str | None
    deadline: float | None  # of the lease, while leased
    attempts: int  # leases issued for this member


class OpenRound(TypedDict):
    round: int
    opened_at: float | None
    init_checkpoint_uri: str | None  # what its members start from (the broadcast)
    mean_weights: LossVector | None
    members: Sequence[OpenMember]


class RunSource(Protocol):
    """The dashboard's read-only view of the runs. Unknown runs raise ``LookupError``."""

    def list_runs(self) -> Sequence[RunSummary]:
        """Every run, oldest first."""
        ...

    def run(self, run_id: str) -> RunInfo:
        """One run, without its rounds."""
        ...

    def rounds(self, run_id: str) -> Sequence[RoundRecord]:
        """The completed rounds, in round order (round 0, the pseudo epoch, first)."""
        ...

    def open_round(self, run_id: str) -> OpenRound | None:
        """The round under way with its members' leases; None once the run has ended."""
        ...

    def policy(self, run_id: str) -> Mapping[str, Any] | None:
        """The ``adaseg-policy/v1`` document (``loss_names``, ``snapshots`` with ``round`` and
        ``layers``, ...), or None for a strategy without a policy."""
        ...

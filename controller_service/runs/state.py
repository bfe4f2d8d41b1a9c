"""One run's state, as typed, immutable objects, and their JSON.

A transition never changes a state in place: it returns a new one (``replace``),
so a request that fails half-way leaves nothing behind, and the repository can
keep the last durable state beside the latest one and fall back to it.

What the state holds is only what the *next* request may need: the run's
header, the strategy's own state, where the next round starts, and the open
round. Completed rounds are stored once, as their own objects (``RoundRecord``
JSON under ``runs/{run}/rounds/``), and a report's free-form metrics too, so a
write costs the same at round 100 as at round 1.

Vectors over the losses are tuples in ``spec.loss_names`` order; the API's
``{name: value}`` objects are made by the views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from controller_service.runs.spec import RunSpec
from controller_service.search.base import JSON, RoundPlan, RoundStart

STATE_FORMAT = "adaseg-run-state/v2"
RunStatus = Literal["running", "finished", "failed"]
MemberStatus = Literal["pending", "leased", "done"]
Outcome = Literal["trained", "diverged", "failed"]
RUNNING, FINISHED, FAILED = "running", "finished", "failed"
PENDING, LEASED, DONE = "pending", "leased", "done"

Vector = tuple[float, ...]


@dataclass(frozen=True)
class MemberResult:
    """How a member ended; ``losses``/``pq``/``checkpoint_uri`` only when trained."""

    outcome: Outcome
    assignment_id: str
    worker: str
    reported_at: float
    losses: Vector | None = None
    pq: float | None = None
    checkpoint_uri: str | None = None
    reason: str | None = None
    has_metrics: bool = False


@dataclass(frozen=True)
class Member:
    """One member of the open round and its leases.

    ``attempts`` counts the assignments issued; ``failures`` the attempts that ended
    in a ``failed`` report or an expired lease. ``last_failed_id`` lets a repeated
    ``failed`` report be told from a stale one.
    """

    index: int
    status: MemberStatus = PENDING
    attempts: int = 0
    failures: int = 0
    assignment_id: str | None = None
    worker: str | None = None
    deadline: float | None = None
    result: MemberResult | None = None
    last_failure: str | None = None
    last_failed_id: str | None = None


@dataclass(frozen=True)
class Start:
    """Where the next round starts: the broadcast checkpoint and its member's numbers."""

    checkpoint_uri: str
    losses: Vector
    weights: Vector
    pq: float
    round: int  # the round that produced it (0: the pseudo epoch)
    member: int


@dataclass(frozen=True)
class Best:
    """The best member so far: the model the next round starts from (after round 1)."""

    round: int
    member: int
    pq: float
    losses: Vector
    weights: Vector
    checkpoint_uri: str


@dataclass(frozen=True)
class OpenRound:
    round: int
    opened_at: float
    init_checkpoint_uri: str
    input_losses: Vector | None  # the policy input (None in round 0)
    plan: RoundPlan
    members: tuple[Member, ...]

    def start(self, start: Start) -> RoundStart:
        """What the strategy is told about where this round started."""
        return RoundStart(self.round, start.losses, start.weights, start.pq)


@dataclass(frozen=True)
class RunState:
    id: str
    spec: RunSpec
    created_at: float
    updated_at: float
    init_checkpoint_uri: str
    strategy_state: JSON
    status: RunStatus = RUNNING
    failure: str | None = None
    initial_losses: Vector | None = None
    best: Best | None = None
    start: Start | None = None
    completed_rounds: int = 0  # round records stored, the pseudo epoch included
    members_done: int = 0  # members of completed rounds (progress for clients)
    open: OpenRound | None = None

    @property
    def seed(self) -> int:
        assert self.spec.seed is not None  # the repository always records one
        return self.spec.seed

    def with_member(self, member: Member, now: float) -> RunState:
        """This state with one member of the open round replaced."""
        assert self.open is not None
        members = list(self.open.members)
        members[member.index] = member
        return replace(self, open=replace(self.open, members=tuple(members)), updated_at=now)


# -- JSON ---------------------------------------------------------------------------------------


def _vector(value: Sequence[float] | None) -> list[float] | None:
    return None if value is None else [float(v) for v in value]


def _tuple(value: Sequence[float] | None) -> Vector | None:
    return None if value is None else tuple(float(v) for v in value)


def result_to_json(result: MemberResult | None) -> JSON | None:
    if result is None:
        return None
    return {
        "outcome": result.outcome,
        "assignment_id": result.assignment_id,
        "worker": result.worker,
        "reported_at": result.reported_at,
        "losses": _vector(result.losses),
        "pq": result.pq,
        "checkpoint_uri": result.checkpoint_uri,
        "reason": result.reason,
        "has_metrics": result.has_metrics,
    }


def result_from_json(value: Mapping[str, Any] | None) -> MemberResult | None:
    if value is None:
        return None
    return MemberResult(**{**value, "losses": _tuple(value.get("losses"))})


def member_to_json(member: Member) -> JSON:
    return {
        "index": member.index,
        "status": member.status,
        "attempts": member.attempts,
        "failures": member.failures,
        "assignment_id": member.assignment_id,
        "worker": member.worker,
        "deadline": member.deadline,
        "result": result_to_json(member.result),
        "last_failure": member.last_failure,
        "last_failed_id": member.last_failed_id,
    }


def member_from_json(value: Mapping[str, Any]) -> Member:
    return Member(**{**value, "result": result_from_json(value.get("result"))})


def _plan_to_json(plan: RoundPlan) -> JSON:
    return {
        "candidates": [list(c) for c in plan.candidates],
        "mean_weights": _vector(plan.mean_weights),
        "public": plan.public,
        "private": plan.private,
    }


def _plan_from_json(value: Mapping[str, Any]) -> RoundPlan:
    return RoundPlan(
        candidates=tuple(tuple(float(w) for w in c) for c in value["candidates"]),
        mean_weights=_tuple(value.get("mean_weights")),
        public=dict(value.get("public") or {}),
        private=dict(value.get("private") or {}),
    )


def _dataclass_json(value: Any) -> JSON | None:
    if value is None:
        return None
    return {k: (_vector(v) if isinstance(v, tuple) else v) for k, v in value.__dict__.items()}


def state_to_json(state: RunState, base: int) -> JSON:
    """The base document (``runs/{run}/state.json``); ``base`` numbers it for the log."""
    open_ = state.open
    return {
        "format": STATE_FORMAT,
        "base": base,
        "id": state.id,
        "name": state.spec.name,
        "loss_names": list(state.spec.loss_names),
        "config": state.spec.config(),
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "init_checkpoint_uri": state.init_checkpoint_uri,
        "status": state.status,
        "failure": state.failure,
        "initial_losses": _vector(state.initial_losses),
        "best": _dataclass_json(state.best),
        "start": _dataclass_json(state.start),
        "completed_rounds": state.completed_rounds,
        "members_done": state.members_done,
        "strategy_state": state.strategy_state,
        "open": None
        if open_ is None
        else {
            "round": open_.round,
            "opened_at": open_.opened_at,
            "init_checkpoint_uri": open_.init_checkpoint_uri,
            "input_losses": _vector(open_.input_losses),
            "plan": _plan_to_json(open_.plan),
            "members": [member_to_json(m) for m in open_.members],
        },
    }


def state_from_json(value: Mapping[str, Any]) -> RunState:
    """Inverse of :func:`state_to_json` (the ``base`` number is the caller's to read)."""
    spec = RunSpec.from_config(value["loss_names"], {**value["config"], "name": value["name"]})
    raw_open = value.get("open")
    open_ = None
    if raw_open is not None:
        open_ = OpenRound(
            round=raw_open["round"],
            opened_at=raw_open["opened_at"],
            init_checkpoint_uri=raw_open["init_checkpoint_uri"],
            input_losses=_tuple(raw_open.get("input_losses")),
            plan=_plan_from_json(raw_open["plan"]),
            members=tuple(member_from_json(m) for m in raw_open["members"]),
        )
    best, start = value.get("best"), value.get("start")
    return RunState(
        id=value["id"],
        spec=spec,
        created_at=value["created_at"],
        updated_at=value["updated_at"],
        init_checkpoint_uri=value["init_checkpoint_uri"],
        strategy_state=dict(value.get("strategy_state") or {}),
        status=value["status"],
        failure=value.get("failure"),
        initial_losses=_tuple(value.get("initial_losses")),
        best=None if best is None else Best(**{**best, **_tuples(best, "losses", "weights")}),
        start=None if start is None else Start(**{**start, **_tuples(start, "losses", "weights")}),
        completed_rounds=value.get("completed_rounds", 0),
        members_done=value.get("members_done", 0),
        open=open_,
    )


def _tuples(value: Mapping[str, Any], *names: str) -> dict[str, Vector | None]:
    return {name: _tuple(value.get(name)) for name in names}


@dataclass(frozen=True)
class LoadedRun:
    """A run read from the store: the state, its base number and log position, and what a
    migration from an older format produced (objects to write before the new base)."""

    state: RunState
    base: int
    seq: int = 0
    migrated: dict[str, Any] = field(default_factory=dict)  # key -> JSON to write

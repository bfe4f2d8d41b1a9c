"""Pydantic models of the REST API v1: what ``/docs`` and ``/openapi.json`` describe.

Requests are strict (no ``"8"`` for 8) and refuse unknown fields, so a typo
such as ``populaton`` is a 422 instead of a silently ignored option. Types are
checked here; the rules on values (ranges, loss names, finiteness) live in
:mod:`controller_service.runs` only, so the HTTP API and direct callers of the
state machine refuse exactly the same things. The ``minimum``/``maximum`` in
the JSON schema document those rules; they are not a second check.

Every vector over the losses (weights, losses) is an object ``{name: value}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller_service.runs import (
    DEFAULT_LEASE_SECONDS,
    MAX_LEASE_SECONDS,
    MAX_POPULATION,
    MAX_ROUNDS,
    MIN_POPULATION,
    MIN_ROUNDS,
    PQ_MAX,
    PQ_MIN,
    RunSpec,
)

LossVector = dict[str, float]


def _doc(**schema: Any) -> Any:
    """JSON-schema keywords shown in /docs without pydantic enforcing them (runs.py does)."""
    return {"json_schema_extra": schema}


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- runs ---------------------------------------------------------------------------------------


class CreateRunRequest(Request):
    """A run's settings. The defaults are ``runs.RunSpec``'s: the paper's, except four
    controller settings (``runs.PAPER_SETTINGS`` has the paper's values; the README says
    why they differ)."""

    loss_names: list[str] = Field(description="distinct, non-blank names of the model's losses")
    population: int = Field(
        RunSpec.population,
        description="members m per round",
        **_doc(minimum=MIN_POPULATION, maximum=MAX_POPULATION),
    )
    rounds: int = Field(
        RunSpec.rounds,
        description="exploration rounds T after the pseudo epoch",
        **_doc(minimum=MIN_ROUNDS, maximum=MAX_ROUNDS),
    )
    sigma: float = Field(
        RunSpec.sigma, description="std of Eq. 2 (the paper: 0.2)", **_doc(exclusiveMinimum=0)
    )
    sigma_mode: str = Field(
        RunSpec.sigma_mode,
        description="'relative' (std sigma*lambda) or 'absolute' (std sigma, the paper)",
    )
    policy_lr: float = Field(
        RunSpec.policy_lr,
        description="Adam learning rate of the policy (the paper: 5e-2)",
        **_doc(exclusiveMinimum=0),
    )
    policy_weight_decay: float = Field(
        RunSpec.policy_weight_decay, description="Adam L2 weight decay", **_doc(minimum=0)
    )
    policy_steps: int = Field(
        RunSpec.policy_steps, description="Eq. 6 Adam steps per round", **_doc(minimum=1)
    )
    hidden: int = Field(
        RunSpec.hidden, description="hidden width of the policy MLP", **_doc(minimum=1)
    )
    seed: int | None = Field(
        None, description="policy seed; random (and recorded) when omitted", **_doc(minimum=0)
    )
    lease_seconds: float = Field(
        DEFAULT_LEASE_SECONDS,
        description="lease length; heartbeats extend it",
        **_doc(exclusiveMinimum=0, maximum=MAX_LEASE_SECONDS),
    )
    reward_terms: str = Field(
        RunSpec.reward_terms,
        description="Eq. 5 terms: 'local' (r_local only) or 'local+imp' (the paper)",
    )
    name: str | None = Field(None, description="free label, e.g. to find the run again")


class BestMember(Response):
    round: int
    member: int
    pq: float
    losses: LossVector
    weights: LossVector
    checkpoint_uri: str


class Candidate(Response):
    """A trained member, or (``valid: false``) a rejected draw with only member and weights."""

    member: int
    weights: LossVector
    valid: bool = Field(description="false: a draw with a non-positive weight, never trained")
    reward: float | None = Field(
        description="Eq. 5 reward (-1 for invalid draws and diverged members; null in round 0)"
    )
    clipped: bool = Field(False, description="clipped to the floor after too many invalid draws")
    pq: float | None = None
    losses: LossVector | None = None
    checkpoint_uri: str | None = None
    diverged: bool = False
    reason: str | None = None
    metrics: dict[str, Any] | None = None
    assignment_id: str | None = None
    worker: str | None = None
    attempts: int = 0


class RoundRecord(Response):
    round: int
    opened_at: float
    completed_at: float
    init_checkpoint_uri: str
    input_losses: LossVector | None = Field(
        description="the policy input: best losses of round t-1"
    )
    mean_weights: LossVector = Field(description="Eq. 1 mean weights of the round")
    candidates: list[Candidate] = Field(description="trained members in order, then invalid draws")
    invalid_draws: int = Field(description="draws rejected for a non-positive weight")
    clipped_members: list[int]
    best_member: int | None = Field(description="null when every member diverged")


class RoundProgress(Response):
    round: int
    init_checkpoint_uri: str
    mean_weights: LossVector
    members: dict[str, int] = Field(description="members pending, leased and done")


class RunRecord(Response):
    id: str
    name: str | None
    status: Literal["running", "finished", "failed"]
    failure: str | None
    round: int = Field(description="the open round (0 = pseudo epoch); T when finished")
    rounds: int
    population: int
    loss_names: list[str]
    config: dict[str, Any]
    created_at: float
    updated_at: float
    init_checkpoint_uri: str
    initial_losses: LossVector | None = Field(description="l^1, the pseudo epoch's losses")
    best: BestMember | None = Field(description="the model the next round starts from")
    current: RoundProgress | None
    history: list[RoundRecord]


# -- leases, heartbeats, reports ----------------------------------------------------------------


class LeaseRequest(Request):
    worker: str = Field(description="who is asking, for the run record and logs")


class Assignment(Response):
    id: str
    round: int
    member: int
    weights: LossVector
    init_checkpoint_uri: str = Field(
        description="checkpoint to start from (init.pt or the broadcast)"
    )
    checkpoint_uri: str = Field(description="where to save this member's checkpoint")
    epoch: int = Field(description="the round index t, for the trainer's schedule")
    epochs: int = Field(description="T + 1: the schedule spans the whole run")
    deadline: float = Field(description="seconds since the epoch; heartbeat before it")
    lease_seconds: float


class LeaseResponse(Response):
    state: Literal["assigned", "wait", "finished"]
    assignment: Assignment | None = None
    retry_after: float | None = Field(None, description="seconds to wait before leasing again")


class HeartbeatResponse(Response):
    assignment_id: str
    state: Literal["leased", "reported"]
    deadline: float | None


class ReportRequest(Request):
    losses: LossVector | None = Field(
        None,
        description="mean of each loss over the round",
        **_doc(additionalProperties={"type": "number", "exclusiveMinimum": 0}),
    )
    pq: float | None = Field(
        None, description="PQ on the proxy validation split", **_doc(minimum=PQ_MIN, maximum=PQ_MAX)
    )
    checkpoint_uri: str | None = Field(None, description="where the member's checkpoint was saved")
    metrics: dict[str, Any] | None = Field(None, description="free-form, kept in the run record")
    diverged: bool = Field(False, description="true: the loss went non-finite; send reason only")
    reason: str | None = None


class ReportResponse(Response):
    assignment_id: str
    round: int
    member: int
    state: Literal["accepted", "duplicate"]
    round_completed: bool
    run_status: str


# -- policy and transfer weights ----------------------------------------------------------------


class Layer(Response):
    weight: list[list[float]]
    bias: list[float]


class Snapshot(Response):
    round: int
    layers: list[Layer]
    activation: str


class PolicyDocument(Response):
    format: str
    run: str
    loss_names: list[str]
    rounds: int
    initial_losses: LossVector | None
    snapshots: list[Snapshot]


class WeightsRequest(Request):
    losses: LossVector | None = Field(None, description="l^e; not needed by the static modes")
    epoch: int = Field(description="epoch e just finished (0: before training)", **_doc(minimum=0))
    epochs: int = Field(description="epochs E of the transfer run", **_doc(minimum=1))
    mode: str = Field(
        "ensemble", description="'ensemble' (Eq. 7), 'final', 'static-pred' or 'static-final'"
    )
    gamma: float = Field(0.9, description="Eq. 7 decay", **_doc(exclusiveMinimum=0, maximum=1))


class WeightsResponse(Response):
    weights: LossVector
    clipped: list[str] = Field(description="losses whose weight was clipped to the floor 1e-3")
    mode: str
    snapshots: int = Field(description="how many snapshots (rounds 1..k) were used")


class Status(Response):
    status: str


class ErrorResponse(Response):
    detail: Any

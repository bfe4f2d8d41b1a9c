"""Pydantic models of the REST API v1: what ``/docs`` and ``/openapi.json`` describe, and what
the typed client returns.

Requests are strict (no ``"8"`` for 8) and refuse unknown fields, so a typo such
as ``populaton`` is a 422 instead of a silently ignored option. Their bounds come
from :mod:`controller_service.contract.limits` and are enforced here and again by
the run state machine (which direct callers use without HTTP), so the schema
states exactly what the server accepts. Responses allow extra fields, so an
older client keeps working against a newer server.

Every vector over the losses (weights, losses) is an object ``{name: value}``.
No FastAPI and no torch here: trainers and external training loops import this.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller_service.contract import limits as L
from controller_service.search.options import (
    DEFAULT_GAMMA,
    DEFAULT_POPULATION,
    DEFAULT_ROUNDS,
    DEFAULT_STRATEGY,
    DEFAULT_TRANSFER_MODE,
    REWARD_TERMS,
    SIGMA_MODES,
    STRATEGY_MODULES,
    TRANSFER_MODES,
    WEIGHT_SCALES,
)

LossVector = dict[str, float]
StrategyName = Literal[tuple(STRATEGY_MODULES)]  # type: ignore[valid-type]
SigmaMode = Literal[SIGMA_MODES]  # type: ignore[valid-type]
RewardTerms = Literal[REWARD_TERMS]  # type: ignore[valid-type]
WeightScale = Literal[WEIGHT_SCALES]  # type: ignore[valid-type]
TransferMode = Literal[TRANSFER_MODES]  # type: ignore[valid-type]
RunStatus = Literal["running", "finished", "failed"]
MemberStatus = Literal["pending", "leased", "done"]
Outcome = Literal["trained", "diverged", "failed"]


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- runs ---------------------------------------------------------------------------------------


class CreateRunRequest(Request):
    """A run's settings. Omitted fields take the defaults shown; the defaults differ from the
    paper in five Ada-Segment settings (README, "Configuration", says why). Options of one
    strategy are refused for another (e.g. ``policy_lr`` with ``strategy: pbt``)."""

    loss_names: list[str] = Field(
        min_length=1,
        max_length=L.MAX_LOSSES,
        description=f"distinct, non-blank names of the model's losses "
        f"(at most {L.MAX_LOSS_NAME_LENGTH} characters each)",
    )
    strategy: StrategyName = Field(
        DEFAULT_STRATEGY, description="'ada-segment' (the paper) or 'pbt' (Baseline-P)"
    )
    population: int = Field(
        DEFAULT_POPULATION, ge=L.MIN_POPULATION, le=L.MAX_POPULATION, description="members m"
    )
    rounds: int = Field(
        DEFAULT_ROUNDS,
        ge=L.MIN_ROUNDS,
        le=L.MAX_ROUNDS,
        description="rounds T after the pseudo epoch",
    )
    sigma: float = Field(
        0.5,
        gt=0,
        le=L.MAX_SIGMA,
        description="exploration std of Eq. 2 (the paper: 0.2, absolute); for pbt the std of "
        "the log-normal perturbation",
    )
    sigma_mode: SigmaMode = Field(
        "relative",
        description="'absolute' (std sigma, the paper), 'relative' (std sigma*lambda) or 'log' "
        "(multiplicative: log-weights ~ N(log lambda, sigma^2))",
    )
    policy_lr: float = Field(
        5e-3, gt=0, le=L.MAX_POLICY_LR, description="Adam lr of the policy (the paper: 5e-2)"
    )
    policy_weight_decay: float = Field(
        5e-4, ge=0, le=L.MAX_POLICY_WEIGHT_DECAY, description="Adam L2 weight decay"
    )
    policy_steps: int = Field(1, ge=1, le=L.MAX_POLICY_STEPS, description="Eq. 6 steps per round")
    hidden: int = Field(16, ge=1, le=L.MAX_HIDDEN, description="hidden width of the policy MLP")
    reward_terms: RewardTerms = Field(
        "local", description="'local+imp' (Eq. 5, the paper), 'local' (Eq. 3) or 'rank'"
    )
    weight_scale: WeightScale = Field(
        "loss-sum",
        description="'free' (the policy's weights as drawn, the paper) or 'loss-sum' (each "
        "weight vector scaled so that sum lambda_i l_i = sum l_i: only ratios are searched)",
    )
    seed: int | None = Field(
        None, ge=0, le=L.MAX_SEED, description="seed; random (and recorded) when omitted"
    )
    lease_seconds: float = Field(
        L.DEFAULT_LEASE_SECONDS,
        ge=L.MIN_LEASE_SECONDS,
        le=L.MAX_LEASE_SECONDS,
        description="lease length; heartbeats extend it",
    )
    max_attempts: int = Field(
        L.DEFAULT_MAX_ATTEMPTS,
        ge=L.MIN_ATTEMPTS,
        le=L.MAX_ATTEMPTS,
        description="failed reports or expired leases after which a member is given up "
        "(recorded as failed, reward -1) so its round completes",
    )
    name: str | None = Field(
        None, max_length=L.MAX_NAME_LENGTH, description="free label, e.g. to find the run again"
    )


class BestMember(Response):
    round: int
    member: int
    pq: float
    losses: LossVector
    weights: LossVector
    checkpoint_uri: str


class Candidate(Response):
    """One member of a completed round: trained, diverged (the loss went non-finite) or
    failed (the trainer could not train it, ``max_attempts`` times)."""

    member: int
    weights: LossVector
    outcome: Outcome
    pq: float | None = None
    losses: LossVector | None = None
    reward: float | None = Field(
        None,
        description="Eq. 3-5 reward (-1 if diverged or failed; null without a policy, "
        "in round 0, and for a clipped draw, which Eq. 6 does not score)",
    )
    clipped: bool = Field(False, description="clipped after max_draws invalid draws")
    checkpoint_uri: str | None = None
    reason: str | None = None
    metrics: dict[str, Any] | None = Field(None, description="only with ?metrics=true")
    assignment_id: str | None = None
    worker: str | None = None
    attempts: int = Field(0, description="assignments issued for this member")
    failures: int = Field(0, description="failed reports and expired leases")


class RoundRecord(Response):
    round: int
    opened_at: float
    completed_at: float
    init_checkpoint_uri: str
    input_losses: LossVector | None = Field(
        description="the losses the round was planned from: best losses of round t-1"
    )
    mean_weights: LossVector | None = Field(description="Eq. 1 mean weights (Ada-Segment)")
    candidates: list[Candidate] = Field(description="the m members, in order")
    invalid_draws: int = Field(0, description="draws refused for a non-positive weight")
    clipped_members: list[int] = Field(default_factory=list)
    strategy: dict[str, Any] = Field(default_factory=dict, description="strategy's own summary")
    best_member: int | None = Field(description="null when no member was trained")


class MemberState(Response):
    member: int
    status: MemberStatus
    attempts: int
    failures: int
    assignment_id: str | None = None
    worker: str | None = None
    deadline: float | None = None
    outcome: Outcome | None = None
    last_failure: str | None = None


class RoundProgress(Response):
    round: int
    opened_at: float
    init_checkpoint_uri: str
    mean_weights: LossVector | None
    members: dict[str, int] = Field(description="members pending, leased and done")


class OpenRound(RoundProgress):
    """``GET /v1/runs/{run}/rounds/current``: the open round's members and leases."""

    weights: list[LossVector] = Field(description="each member's candidate weights")
    leases: list[MemberState]


class RunRecord(Response):
    id: str
    name: str | None
    strategy: str = "ada-segment"
    status: RunStatus
    failure: str | None
    round: int = Field(description="the open round (0 = pseudo epoch); T when finished")
    rounds: int
    completed_rounds: int = Field(0, description="rounds completed, the pseudo epoch included")
    members_done: int = Field(0, description="members trained, diverged or failed so far")
    population: int
    loss_names: list[str]
    config: dict[str, Any]
    created_at: float
    updated_at: float
    init_checkpoint_uri: str
    initial_losses: LossVector | None = Field(description="l^1, the pseudo epoch's losses")
    best: BestMember | None = Field(description="the model the next round starts from")
    current: RoundProgress | None
    history: list[RoundRecord] | None = Field(
        None, description="the completed rounds, only with ?history=true"
    )


# -- leases, heartbeats, reports ----------------------------------------------------------------


class LeaseRequest(Request):
    worker: str = Field(
        min_length=1,
        max_length=L.MAX_NAME_LENGTH,
        description="who is asking; one name per trainer process (a retried lease by the "
        "same name gets the same assignment back)",
    )


class Assignment(Response):
    id: str
    round: int
    member: int
    attempt: int = Field(1, description="1 for the first issue of this member")
    weights: LossVector
    init_checkpoint_uri: str = Field(description="checkpoint to start from (init.pt or the best)")
    checkpoint_uri: str = Field(description="where to save this member's checkpoint")
    epoch: int = Field(description="0-based epoch of the T-epoch schedule this interval trains")
    epochs: int = Field(description="T: the length of the schedule")
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
    """A trained member (``losses``, ``pq``, ``checkpoint_uri``), or ``diverged: true`` (the
    loss went non-finite: reward -1, never retried), or ``failed: true`` (the trainer could
    not train it: retried up to ``max_attempts``), each of the last two with a ``reason``."""

    losses: LossVector | None = Field(
        None,
        description=f"mean of each loss over the round, each in [{L.MIN_LOSS:g}, {L.MAX_LOSS:g}]",
        json_schema_extra={
            "additionalProperties": {"type": "number", "minimum": L.MIN_LOSS, "maximum": L.MAX_LOSS}
        },
    )
    pq: float | None = Field(None, ge=L.PQ_MIN, le=L.PQ_MAX, description="PQ on proxy-val")
    checkpoint_uri: str | None = Field(
        None,
        max_length=L.MAX_URI_LENGTH,
        description="the member's checkpoint: an object under the run's prefix in the store",
    )
    metrics: dict[str, Any] | None = Field(
        None, description=f"free-form, at most {L.MAX_METRICS_BYTES} bytes of JSON"
    )
    diverged: bool = False
    failed: bool = False
    reason: str | None = Field(None, max_length=L.MAX_REASON_LENGTH)


class ReportResponse(Response):
    assignment_id: str
    round: int
    member: int
    state: Literal["accepted", "duplicate"]
    round_completed: bool
    run_status: RunStatus


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
    epoch: int = Field(ge=0, description="epoch e just finished (0: before training)")
    epochs: int = Field(ge=1, description="epochs E of the transfer run")
    mode: TransferMode = Field(
        DEFAULT_TRANSFER_MODE,
        description="'ensemble' (Eq. 7), 'final', 'static-pred' or 'static-final'",
    )
    gamma: float = Field(DEFAULT_GAMMA, gt=0, le=L.MAX_GAMMA, description="Eq. 7 decay")


class WeightsResponse(Response):
    weights: LossVector
    clipped: list[str] = Field(description="losses whose weight was clipped to the floor 1e-3")
    mode: str
    snapshots: int = Field(description="how many snapshots (rounds 1..k) were used")


class Status(Response):
    status: str
    detail: str | None = None


class ErrorResponse(Response):
    detail: Any

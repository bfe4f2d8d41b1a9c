"""The run state machine of the exploration phase, and the store-backed repository around it.

Two layers in one concept:

* **Pure transitions** (:func:`create_state`, :func:`lease`, :func:`lease_many`,
  :func:`heartbeat`, :func:`report`, :func:`run_record`, :func:`policy_document`,
  :func:`transfer_weights_for`) over one run's state dict — exactly what
  ``runs/{id}/state.json`` holds. They take ``now`` (seconds since the epoch)
  as an argument, so tests drive them with a fake clock, and they do no I/O.
  Every transition checks everything first and raises before it touches the
  state: a refused request leaves the state as it was.
* :class:`RunRepository`, the thin shell: it loads states from the store (on
  first use, so a restarted service continues every run), serialises each
  run's read-modify-write with a lock, and writes the policy snapshot and then
  the state through the store *before* answering (batching the writes of
  concurrent requests). The candidates of a round and the policy's RNG state
  are in the state, so a restart never redraws.

Choices where DESIGN.md is silent (the README repeats them):

* Round 0, the pseudo epoch, has one assignment (member 0, all weights 1)
  that starts from ``init.pt``; its losses are l^1 and its PQ is v_best_0.
  It runs *before* the training schedule (the paper: "before the exact
  training schedule"): rounds 1..T are epochs 0..T-1 of a T-epoch schedule,
  so the best model of round T has trained exactly T epochs, like a baseline
  of T epochs. See :func:`schedule_position`.
  If it diverges the run cannot start: its status becomes ``failed`` (with a
  ``failure`` reason) and leases on it are refused with 409.
* ``best`` is the model the next round starts from: the best member of the
  latest round that had a trained (non-diverged) member; ties go to the lower
  member index. When every member of a round diverges, the policy is still
  updated (rewards -1), ``best`` stays, and the next round starts again from
  the same checkpoint with the same policy input.
* Lease expiry is evaluated lazily on every request. An expired lease that
  has not been issued again can still heartbeat and report (accepting late
  work loses nothing); once the member is issued again the old assignment id
  gets 409. A repeated report of the accepted assignment answers
  ``duplicate`` and changes nothing.
* A worker that leases while it holds a lease of the open round gets that
  assignment back (fresh deadline), so a retried lease strands nothing;
  worker names must be unique per trainer process.
* In the run record, a round's ``candidates`` are its m trained members in
  member order, then every invalid draw as ``{member, weights, valid: false,
  reward: -1}``; ``invalid_draws`` counts them.
* ``POST /weights`` uses the snapshots of the completed rounds 1..k (k = T
  once the run is finished): ``ensemble`` aligns epochs with those k rounds,
  ``final`` is pi^k, ``static-final`` the weights of ``best``. 409 before the
  first snapshot exists.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from numbers import Real
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from controller_service.layout import (
    init_checkpoint_key,
    member_checkpoint_key,
    policy_snapshot_key,
    run_state_key,
)
from controller_service.store import ObjectNotFound, ObjectStore, StoreError

if TYPE_CHECKING:  # policy imports torch; the service imports it lazily to start fast
    from controller_service.policy import Policy, PolicyConfig

STATE_FORMAT = "adaseg-run-state/v1"
POLICY_FORMAT = "adaseg-policy/v1"

# The paper's controller settings (Implementation Details; DESIGN.md pins them). A run
# created with these in its body runs the paper's algorithm exactly; RunSpec's defaults
# differ in all four (see RunSpec).
PAPER_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {"sigma": 0.2, "sigma_mode": "absolute", "policy_lr": 5e-2, "reward_terms": "local+imp"}
)

RUNNING, FINISHED, FAILED = "running", "finished", "failed"
PENDING, LEASED, DONE = "pending", "leased", "done"

MIN_POPULATION, MAX_POPULATION = 2, 1024
MIN_ROUNDS, MAX_ROUNDS = 1, 1000
MAX_LOSSES = 64
MAX_NAME_LENGTH = 200
MAX_HIDDEN = 1024
MAX_POLICY_STEPS = 100
MAX_LEASE_SECONDS = 7 * 24 * 3600.0
DEFAULT_LEASE_SECONDS = 600.0
PQ_MIN, PQ_MAX = 0.0, 100.0
INVALID_REWARD = -1.0  # DESIGN: an invalid (never trained) candidate gets reward -1 in Eq. 6
WEIGHT_FLOOR = 1e-3
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 0.05, 2.0

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_ASSIGNMENT_ID = re.compile(r"^r(\d{3,})-m(\d{2,})-a([1-9]\d*)$")


# -- errors -------------------------------------------------------------------------------------


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


def _loc_of_message(message: str, fields: Mapping[str, str]) -> tuple[str, ...]:
    """The request field a maths-module ValueError is about, from the word it starts with."""
    head = re.split(r"[^A-Za-z_]", message, maxsplit=1)[0]
    return (fields[head],) if head in fields else ()


# -- run specification --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """The body of ``POST /v1/runs``, checked: every rule here is a 422 at the API.

    The defaults are the paper's except four controller settings (``PAPER_SETTINGS`` has
    the paper's): ``reward_terms`` "local", ``policy_lr`` 5e-3, ``sigma_mode`` "relative"
    and ``sigma`` 0.5. In the effectiveness benchmark (bench/effectiveness, 5 seeds) the
    paper's settings let the policy collapse in two seeds of five (one Adam step at 5e-2
    moves weights initialised near 1/16 by ~80% and flipped a mean weight negative, after
    which an absolute sigma of 0.2 draws no valid candidate again), so their policy
    ensemble averaged below equal weights; these four gave a gain over equal weights in
    every seed. Each is one field away for whoever wants the paper's behaviour.
    """

    loss_names: tuple[str, ...]
    population: int = 8
    rounds: int = 12
    sigma: float = 0.5
    sigma_mode: str = "relative"
    policy_lr: float = 5e-3
    policy_weight_decay: float = 5e-4
    policy_steps: int = 1
    hidden: int = 16
    seed: int | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    reward_terms: str = "local"
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.loss_names, str) or not isinstance(self.loss_names, Sequence):
            raise RunInputError(("loss_names",), "must be a list of loss names")
        object.__setattr__(self, "loss_names", tuple(self.loss_names))
        _check_loss_names(self.loss_names)
        _check_int("population", self.population, MIN_POPULATION, MAX_POPULATION)
        _check_int("rounds", self.rounds, MIN_ROUNDS, MAX_ROUNDS)
        _check_int("policy_steps", self.policy_steps, 1, MAX_POLICY_STEPS)
        _check_int("hidden", self.hidden, 1, MAX_HIDDEN)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, 2**63 - 1)
        if not _is_number(self.lease_seconds) or not 0 < self.lease_seconds <= MAX_LEASE_SECONDS:
            raise RunInputError(
                ("lease_seconds",),
                f"must be in (0, {MAX_LEASE_SECONDS:g}], got {self.lease_seconds!r}",
            )
        from controller_service.rewards import REWARD_TERMS  # numpy: imported when needed

        if self.reward_terms not in REWARD_TERMS:
            raise RunInputError(
                ("reward_terms",), f"must be one of {REWARD_TERMS}, got {self.reward_terms!r}"
            )
        if self.name is not None and (
            not isinstance(self.name, str) or len(self.name) > MAX_NAME_LENGTH
        ):
            raise RunInputError(("name",), f"must be a string of at most {MAX_NAME_LENGTH} chars")
        self.policy_config()  # sigma, sigma_mode, lr, weight decay: the maths module's own rules

    def policy_config(self) -> PolicyConfig:
        from controller_service.policy import PolicyConfig

        try:
            return PolicyConfig(
                n_losses=len(self.loss_names),
                hidden=self.hidden,
                sigma=self.sigma,
                sigma_mode=self.sigma_mode,
                lr=self.policy_lr,
                weight_decay=self.policy_weight_decay,
                steps=self.policy_steps,
                floor=WEIGHT_FLOOR,
            )
        except (TypeError, ValueError) as exc:
            fields = {
                "sigma": "sigma",
                "sigma_mode": "sigma_mode",
                "lr": "policy_lr",
                "weight_decay": "policy_weight_decay",
            }
            raise RunInputError(_loc_of_message(str(exc), fields), str(exc)) from None

    def config(self) -> dict[str, Any]:
        """The run's settings as stored in the state and shown in the run record."""
        values = asdict(self)
        del values["loss_names"], values["name"]
        return values

    @classmethod
    def from_config(cls, loss_names: Sequence[str], config: Mapping[str, Any]) -> RunSpec:
        return cls(loss_names=tuple(loss_names), **config)


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: object, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise RunInputError((name,), f"must be an integer in {minimum}..{maximum}, got {value!r}")


def _check_loss_names(names: tuple[str, ...]) -> None:
    if not names:
        raise RunInputError(("loss_names",), "must name at least one loss")
    if len(names) > MAX_LOSSES:
        raise RunInputError(("loss_names",), f"at most {MAX_LOSSES} losses, got {len(names)}")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            raise RunInputError(
                ("loss_names", i),
                f"a loss name must be a non-blank string of at most 64 chars, got {name!r}",
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RunInputError(("loss_names",), f"duplicate loss names {duplicates}")


# -- vectors by loss name -----------------------------------------------------------------------


def _named(names: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    return {name: float(value) for name, value in zip(names, values, strict=True)}


def _vector(names: Sequence[str], values: Mapping[str, float]) -> list[float]:
    return [values[name] for name in names]


def validate_losses(
    loss_names: Sequence[str], losses: object, field_name: str = "losses"
) -> dict[str, float]:
    """The run's loss vector from a ``{name: value}`` mapping: exactly the run's names, finite, > 0.

    Errors name the offending loss. NaN and infinities arrive here when a client
    sends the non-standard ``NaN``/``Infinity`` JSON tokens.
    """
    if not isinstance(losses, Mapping):
        raise RunInputError(
            (field_name,), f"must be an object {{name: value}} over {list(loss_names)}"
        )
    missing = [name for name in loss_names if name not in losses]
    unknown = [name for name in losses if name not in loss_names]
    if missing or unknown:
        raise RunInputError(
            (field_name,),
            f"expected exactly the run's losses {list(loss_names)}; "
            f"missing {missing}, unknown {[str(name) for name in unknown]}",
        )
    out = {}
    for name in loss_names:
        value = losses[name]
        if not isinstance(value, Real) or isinstance(value, bool):
            raise RunInputError((field_name, name), f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise RunInputError((field_name, name), f"is {value!r}; a loss must be finite and > 0")
        if value <= 0:
            raise RunInputError((field_name, name), f"is {value!r}; a loss must be > 0")
        out[name] = float(value)
    return out


def _check_json_finite(value: object, loc: tuple[str | int, ...]) -> None:
    """Refuse NaN/inf anywhere in free-form JSON (``metrics``): the state must stay strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        raise RunInputError(loc, f"is {value!r}; numbers must be finite")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_json_finite(item, (*loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_finite(item, (*loc, i))


# -- reports ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberReport:
    """What a trainer reports for its assignment: a trained member, or a diverged one."""

    losses: Mapping[str, float] | None = None
    pq: float | None = None
    checkpoint_uri: str | None = None
    metrics: Mapping[str, Any] | None = None
    diverged: bool = False
    reason: str | None = None


def _checked_result(state: Mapping[str, Any], rep: MemberReport) -> dict[str, Any]:
    """The member result to store, from a report checked against the run."""
    if rep.diverged:
        if not isinstance(rep.reason, str) or not rep.reason.strip():
            raise RunInputError(("reason",), "a diverged report must say why (non-empty string)")
        for name in ("losses", "pq"):
            if getattr(rep, name) is not None:
                raise RunInputError((name,), "a diverged report carries no losses or PQ")
        return {
            "diverged": True,
            "reason": rep.reason[:2000],
            "losses": None,
            "pq": None,
            "checkpoint_uri": None,
            "metrics": None,
        }
    if rep.losses is None:
        raise RunInputError(("losses",), "required unless the report says diverged: true")
    losses = validate_losses(state["loss_names"], rep.losses)
    if rep.pq is None:
        raise RunInputError(("pq",), "required unless the report says diverged: true")
    if not _is_number(rep.pq) or not PQ_MIN <= rep.pq <= PQ_MAX:
        raise RunInputError(
            ("pq",), f"must be a number in [{PQ_MIN:g}, {PQ_MAX:g}], got {rep.pq!r}"
        )
    if not isinstance(rep.checkpoint_uri, str) or not rep.checkpoint_uri.strip():
        raise RunInputError(("checkpoint_uri",), "required: the URI of the saved member checkpoint")
    if rep.metrics is not None:
        if not isinstance(rep.metrics, Mapping):
            raise RunInputError(("metrics",), "must be an object")
        _check_json_finite(rep.metrics, ("metrics",))
    return {
        "diverged": False,
        "reason": None,
        "losses": losses,
        "pq": float(rep.pq),
        "checkpoint_uri": rep.checkpoint_uri,
        "metrics": dict(rep.metrics) if rep.metrics is not None else None,
    }


# -- state --------------------------------------------------------------------------------------


def _load_policy(state: Mapping[str, Any]) -> Policy:
    from controller_service.policy import Policy

    spec = RunSpec.from_config(state["loss_names"], state["config"])
    return Policy.from_state_dict(spec.policy_config(), state["policy"])


def _new_member(member: int) -> dict[str, Any]:
    return {
        "member": member,
        "status": PENDING,
        "attempts": 0,
        "assignment_id": None,
        "worker": None,
        "deadline": None,
        "result": None,
    }


def _open(round_: int, now: float, draw: dict[str, Any], population: int) -> dict[str, Any]:
    """An open round: ``draw`` never changes once drawn (the encoder caches it), the
    ``members`` track leases and results."""
    return {
        "round": round_,
        "opened_at": now,
        "draw": draw,
        "members": [_new_member(j) for j in range(population)],
    }


def _round_zero(loss_names: Sequence[str], init_checkpoint_uri: str, now: float) -> dict[str, Any]:
    ones = _named(loss_names, [1.0] * len(loss_names))
    draw = {
        "init_checkpoint_uri": init_checkpoint_uri,
        "input_losses": None,
        "mean_weights": ones,
        "candidates": [ones],
        "invalid_draws": _invalid_draws(loss_names, [], []),
        "clipped_members": [],
    }
    return _open(0, now, draw, 1)


def _invalid_draws(
    names: Sequence[str], members: Sequence[int], weights: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """Rejected draws, by column: there can be thousands in a round, so no dict per draw."""
    return {
        "members": list(members),
        "weights": {name: [float(w[i]) for w in weights] for i, name in enumerate(names)},
    }


def _invalid_rows(names: Sequence[str], invalid: Mapping[str, Any]) -> list[list[float]]:
    return [list(row) for row in zip(*(invalid["weights"][n] for n in names), strict=True)]


def _open_round(
    state: Mapping[str, Any], policy: Policy, round_: int, start: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """Round ``round_``: Eq. 1 on the start losses, Eq. 2 for the m members, drawn once."""
    names = state["loss_names"]
    try:
        mean = policy.mean_weights(_vector(names, start["losses"]), names)
        draw = policy.sample(mean, state["config"]["population"])
    except ValueError as exc:  # e.g. losses so extreme that pi(l)/l overflows
        raise RunInputError(("losses",), f"the policy cannot use these losses: {exc}") from None
    drawn = {
        "init_checkpoint_uri": start["checkpoint_uri"],
        "input_losses": dict(start["losses"]),
        "mean_weights": _named(names, mean),
        "candidates": [_named(names, c) for c in draw.candidates],
        "invalid_draws": _invalid_draws(names, draw.invalid_members, draw.invalid),
        "clipped_members": list(draw.clipped_members),
    }
    return _open(round_, now, drawn, len(draw.candidates))


def create_state(
    run_id: str, spec: RunSpec, *, now: float, init_checkpoint_uri: str
) -> dict[str, Any]:
    """A run waiting for its pseudo epoch; ``spec.seed`` must be set (the repository draws one)."""
    from controller_service.policy import Policy

    if spec.seed is None:
        raise RunInputError(("seed",), "create_state needs a seed (draw one if the user gave none)")
    policy = Policy(spec.policy_config(), spec.seed)
    return {
        "format": STATE_FORMAT,
        "id": run_id,
        "name": spec.name,
        "created_at": now,
        "updated_at": now,
        "status": RUNNING,
        "failure": None,
        "loss_names": list(spec.loss_names),
        "config": spec.config(),
        "init_checkpoint_uri": init_checkpoint_uri,
        "initial_losses": None,
        "best": None,
        "start": None,  # {checkpoint_uri, losses}: where the next round starts (the broadcast)
        "history": [],
        "current": _round_zero(spec.loss_names, init_checkpoint_uri, now),
        "policy": policy.state_dict(),
    }


def assignment_id(round_: int, member: int, attempt: int) -> str:
    """Unique per issuance, so a report on an issuance that was replaced can be told apart."""
    return f"r{round_:03d}-m{member:02d}-a{attempt}"


def _parse_assignment_id(value: str) -> tuple[int, int, int] | None:
    match = _ASSIGNMENT_ID.match(value)
    if not match:
        return None
    round_, member, attempt = (int(g) for g in match.groups())
    return (round_, member, attempt) if assignment_id(round_, member, attempt) == value else None


def _expired(member: Mapping[str, Any], now: float) -> bool:
    return member["status"] == LEASED and member["deadline"] <= now


def _retry_after(members: Sequence[Mapping[str, Any]], now: float) -> float:
    remaining = [m["deadline"] - now for m in members if m["status"] == LEASED]
    soonest = min(remaining, default=RETRY_AFTER_MAX)
    return round(min(max(soonest, RETRY_AFTER_MIN), RETRY_AFTER_MAX), 3)


@dataclass(frozen=True)
class LeaseOutcome:
    answer: dict[str, Any]
    changed: bool = False  # the state changed and must be written
    issued: bool = False  # a new assignment was issued ...
    reissued_expired: bool = False  # ... to a member whose previous lease had expired


def lease(
    state: dict[str, Any], worker: str, *, now: float, uri_of: Callable[[str], str]
) -> LeaseOutcome:
    """Issue the lowest-numbered member that is pending or whose lease expired.

    A worker that asks again while it holds a lease of the open round gets the
    same assignment back, with a fresh deadline: a lease request retried after
    a lost answer (or a worker restarted under the same name) does not strand
    a member until its lease expires. Worker names must therefore be unique
    per trainer process. Answers ``wait`` (with ``retry_after``) while every
    member is leased or done, and ``finished`` after the last round. ``uri_of``
    turns a store key into a URI (where the trainer saves its checkpoint).
    """
    return lease_many(state, [worker], now=now, uri_of=uri_of)[worker]


def lease_many(
    state: dict[str, Any], workers: Sequence[str], *, now: float, uri_of: Callable[[str], str]
) -> dict[str, LeaseOutcome]:
    """:func:`lease` for several workers in order, in O(members + workers)."""
    for worker in workers:
        if not isinstance(worker, str) or not worker.strip() or len(worker) > MAX_NAME_LENGTH:
            raise RunInputError(
                ("worker",), f"must be a non-blank string of at most {MAX_NAME_LENGTH} chars"
            )
    if state["status"] == FINISHED:
        return {worker: LeaseOutcome({"state": "finished"}) for worker in workers}
    if state["status"] == FAILED:
        raise RunConflict(f"run {state['id']} failed: {state['failure']}")
    current = state["current"]
    members = current["members"]
    holders = {m["worker"]: m for m in members if m["status"] == LEASED}
    free = iter([m for m in members if m["status"] == PENDING or _expired(m, now)])
    outcomes: dict[str, LeaseOutcome] = {}
    waiting = []
    for worker in workers:
        member = holders.get(worker)
        issued = reissued = False
        if member is None or member["worker"] != worker or member["status"] != LEASED:
            member = next(free, None)
            if member is None:
                waiting.append(worker)
                continue
            issued, reissued = True, member["status"] == LEASED
            member["attempts"] += 1
            member["assignment_id"] = assignment_id(
                current["round"], member["member"], member["attempts"]
            )
            member["status"] = LEASED
            member["worker"] = worker
            holders[worker] = member
        member["deadline"] = now + state["config"]["lease_seconds"]
        state["updated_at"] = now
        answer = {"state": "assigned", "assignment": _assignment(state, member, uri_of)}
        outcomes[worker] = LeaseOutcome(answer, True, issued, reissued)
    if waiting:
        wait = {"state": "wait", "retry_after": _retry_after(members, now)}
        outcomes.update({worker: LeaseOutcome(dict(wait)) for worker in waiting})
    return outcomes


def schedule_position(round_: int, rounds: int) -> tuple[int, int]:
    """``(epoch, epochs)``: where a round's interval lies in the trainers' LR schedule.

    Rounds 1..T train epochs 0..T-1 of one T-epoch schedule (0-based). Round 0,
    the pseudo epoch, starts from the same initial model as round 1 and trains
    at round 1's position, so the probe that gives l^1 sees the learning rate
    the first real epoch will see, and the schedule is not shortened by it.
    """
    return max(round_ - 1, 0), rounds


def _assignment(
    state: Mapping[str, Any], member: Mapping[str, Any], uri_of: Callable[[str], str]
) -> dict[str, Any]:
    current = state["current"]
    round_, j = current["round"], member["member"]
    epoch, epochs = schedule_position(round_, state["config"]["rounds"])
    return {
        "id": member["assignment_id"],
        "round": round_,
        "member": j,
        "weights": dict(current["draw"]["candidates"][j]),
        "init_checkpoint_uri": current["draw"]["init_checkpoint_uri"],
        "checkpoint_uri": uri_of(member_checkpoint_key(state["id"], round_, j)),
        "epoch": epoch,
        "epochs": epochs,
        "deadline": member["deadline"],
        "lease_seconds": state["config"]["lease_seconds"],
    }


@dataclass(frozen=True)
class _Target:
    """Where an assignment id points: a member of the open round, or a past round's candidate."""

    round_: int
    member_index: int
    open_member: dict[str, Any] | None = None
    past_candidate: Mapping[str, Any] | None = None

    def accepted_id(self) -> str | None:
        """The assignment whose report completed the member, if any."""
        if self.past_candidate is not None:
            return self.past_candidate["assignment_id"]
        result = self.open_member["result"] if self.open_member else None
        return result["assignment_id"] if result else None


def _find(state: Mapping[str, Any], aid: str) -> _Target:
    unknown = RunNotFound(f"run {state['id']} has no assignment {aid!r}")
    parsed = _parse_assignment_id(aid) if isinstance(aid, str) else None
    if parsed is None:
        raise unknown
    round_, j, attempt = parsed
    current = state["current"]
    if current is not None and round_ == current["round"]:
        members = current["members"]
        if j >= len(members) or attempt > members[j]["attempts"]:
            raise unknown
        return _Target(round_, j, open_member=members[j])
    history = state["history"]
    if round_ < len(history):
        candidates = history[round_]["candidates"]  # trained members first, in member order
        trained = 1 if round_ == 0 else state["config"]["population"]
        if j >= trained or attempt > candidates[j]["attempts"]:
            raise unknown
        return _Target(round_, j, past_candidate=candidates[j])
    raise unknown


def _not_current(target: _Target, aid: str) -> RunConflict:
    accepted = target.accepted_id()
    if accepted is not None:
        return RunConflict(
            f"assignment {aid} is stale: member {target.member_index} of round {target.round_} "
            f"was already completed by assignment {accepted}"
        )
    current_id = target.open_member["assignment_id"] if target.open_member else None
    return RunConflict(
        f"assignment {aid} is stale: its lease was lost and member {target.member_index} "
        f"of round {target.round_} was issued again as {current_id}"
    )


def heartbeat(state: dict[str, Any], aid: str, *, now: float) -> tuple[dict[str, Any], bool]:
    """Extend the lease of ``aid``; returns (answer, whether the state changed).

    A heartbeat after the assignment's own report answers ``reported`` (the
    trainer's heartbeat thread may race with its report); any other stale id is 409.
    """
    target = _find(state, aid)
    if target.accepted_id() == aid:
        return {"assignment_id": aid, "state": "reported", "deadline": None}, False
    member = target.open_member
    if member is None or member["status"] == DONE or member["assignment_id"] != aid:
        raise _not_current(target, aid)
    member["deadline"] = now + state["config"]["lease_seconds"]
    state["updated_at"] = now
    return {"assignment_id": aid, "state": "leased", "deadline": member["deadline"]}, True


@dataclass
class ReportOutcome:
    answer: dict[str, Any]
    accepted: bool  # False: a duplicate of the accepted report, nothing changed
    snapshots: dict[int, dict[str, Any]] = field(default_factory=dict)  # pi^t to store first
    completed_round: int | None = None


def report(
    state: dict[str, Any],
    aid: str,
    rep: MemberReport,
    *,
    now: float,
    before_change: Callable[[Mapping[int, dict[str, Any]]], None] | None = None,
) -> ReportOutcome:
    """Record a member's result; the last one completes the round (rewards, Eq. 6, next round).

    ``before_change(snapshots)`` is called with pi^t after everything is computed
    and before the state changes: the repository stores the snapshot there, so
    the state never refers to a snapshot that is not in the store.
    """
    result = _checked_result(state, rep)
    target = _find(state, aid)
    answer = {
        "assignment_id": aid,
        "round": target.round_,
        "member": target.member_index,
    }
    if target.accepted_id() == aid:
        return ReportOutcome(
            {
                **answer,
                "state": "duplicate",
                "round_completed": False,
                "run_status": state["status"],
            },
            accepted=False,
        )
    member = target.open_member
    if member is None or member["status"] == DONE or member["assignment_id"] != aid:
        raise _not_current(target, aid)
    result.update(assignment_id=aid, worker=member["worker"], reported_at=now)

    members = state["current"]["members"]
    results = [result if m is member else m["result"] for m in members]
    completion = None
    if all(r is not None for r in results):  # computed before anything changes: may raise
        completion = _complete_round(state, results, now)

    snapshots: dict[int, dict[str, Any]] = {}
    if completion is not None and completion[2] is not None:
        snapshots[target.round_] = completion[2]
        if before_change is not None:
            before_change(snapshots)  # may raise: nothing has changed yet
    member.update(status=DONE, result=result, deadline=None)
    state["updated_at"] = now
    if completion is not None:
        record, updates, _ = completion
        state["history"].append(record)
        state.update(updates)
    return ReportOutcome(
        {
            **answer,
            "state": "accepted",
            "round_completed": completion is not None,
            "run_status": state["status"],
        },
        accepted=True,
        snapshots=snapshots,
        completed_round=target.round_ if completion is not None else None,
    )


def _history_record(
    state: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    member_rewards: Sequence[float | None],
    best_member: int | None,
    now: float,
) -> dict[str, Any]:
    """A round as the run record shows it: trained members in member order, then the invalid
    draws (``valid: false``, reward -1, never trained) with only their member and weights."""
    current = state["current"]
    draw = current["draw"]
    candidates: list[dict[str, Any]] = []
    for j, (member, result, reward) in enumerate(
        zip(current["members"], results, member_rewards, strict=True)
    ):
        candidates.append(
            {
                "member": j,
                "weights": draw["candidates"][j],
                "valid": True,
                "clipped": j in draw["clipped_members"],
                "pq": result["pq"],
                "losses": result["losses"],
                "reward": reward,
                "checkpoint_uri": result["checkpoint_uri"],
                "diverged": result["diverged"],
                "reason": result["reason"],
                "metrics": result["metrics"],
                "assignment_id": result["assignment_id"],
                "worker": result["worker"],
                "attempts": member["attempts"],
            }
        )
    names = state["loss_names"]
    invalid = draw["invalid_draws"]
    for j, weights in zip(invalid["members"], _invalid_rows(names, invalid), strict=True):
        candidates.append(
            {
                "member": j,
                "weights": _named(names, weights),
                "valid": False,
                "reward": INVALID_REWARD,
            }
        )
    return {
        "round": current["round"],
        "opened_at": current["opened_at"],
        "completed_at": now,
        "init_checkpoint_uri": draw["init_checkpoint_uri"],
        "input_losses": draw["input_losses"],
        "mean_weights": draw["mean_weights"],
        "candidates": candidates,
        "invalid_draws": len(invalid["members"]),
        "clipped_members": draw["clipped_members"],
        "best_member": best_member,
    }


def _complete_round(
    state: Mapping[str, Any], results: Sequence[Mapping[str, Any]], now: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(history record, state updates, snapshot pi^t or None) of the open round; no mutation."""
    current = state["current"]
    draw = current["draw"]
    round_, rounds = current["round"], state["config"]["rounds"]

    if round_ == 0:
        result = results[0]
        record = _history_record(state, results, [None], None, now)
        if result["diverged"]:
            failure = f"round 0 (the pseudo epoch) diverged: {result['reason']}"
            return record, {"status": FAILED, "failure": failure, "current": None}, None
        record["best_member"] = 0
        best = _best_entry(0, 0, result, draw["candidates"][0])
        start = {"checkpoint_uri": state["init_checkpoint_uri"], "losses": result["losses"]}
        policy = _load_policy(state)
        opened = _open_round(state, policy, 1, start, now)
        updates = {
            "initial_losses": result["losses"],
            "best": best,
            "start": start,
            "current": opened,
            "policy": policy.state_dict(),
        }
        return record, updates, None

    from controller_service.rewards import rewards

    pqs = [None if r["diverged"] else r["pq"] for r in results]
    member_rewards = rewards(
        pqs, state["best"]["pq"], round_, rounds, state["config"]["reward_terms"]
    )
    names = state["loss_names"]
    invalid = _invalid_rows(names, draw["invalid_draws"])
    drawn = [_vector(names, w) for w in draw["candidates"]] + invalid
    policy = _load_policy(state)
    policy.update(
        _vector(names, draw["input_losses"]),
        drawn,
        member_rewards + [INVALID_REWARD] * len(invalid),
    )
    trained = [j for j, pq in enumerate(pqs) if pq is not None]
    best_member = max(trained, key=lambda j: (pqs[j], -j)) if trained else None
    record = _history_record(state, results, member_rewards, best_member, now)
    updates: dict[str, Any] = {}
    if best_member is not None:
        result = results[best_member]
        updates["best"] = _best_entry(round_, best_member, result, draw["candidates"][best_member])
        updates["start"] = {"checkpoint_uri": result["checkpoint_uri"], "losses": result["losses"]}
    if round_ == rounds:
        updates.update(status=FINISHED, current=None)
    else:
        start = updates.get("start", state["start"])
        updates["current"] = _open_round(state, policy, round_ + 1, start, now)
    updates["policy"] = policy.state_dict()
    return record, updates, policy.snapshot()


def _best_entry(
    round_: int, member: int, result: Mapping[str, Any], weights: Mapping[str, float]
) -> dict[str, Any]:
    return {
        "round": round_,
        "member": member,
        "pq": result["pq"],
        "losses": result["losses"],
        "weights": weights,
        "checkpoint_uri": result["checkpoint_uri"],
    }


# -- read-only views ----------------------------------------------------------------------------


def completed_rounds(state: Mapping[str, Any]) -> int:
    """Rounds completed, the pseudo epoch (round 0) included."""
    return len(state["history"])


def snapshot_rounds(state: Mapping[str, Any]) -> list[int]:
    """The rounds whose policy snapshot exists: the completed rounds 1..k."""
    return [record["round"] for record in state["history"] if record["round"] >= 1]


def run_record(state: Mapping[str, Any]) -> dict[str, Any]:
    """The run as ``GET /v1/runs/{id}`` shows it (the policy's internals stay out)."""
    current = state["current"]
    if current is not None:
        round_ = current["round"]
        counts = {status: 0 for status in (PENDING, LEASED, DONE)}
        for member in current["members"]:
            counts[member["status"]] += 1
        progress = {
            "round": round_,
            "init_checkpoint_uri": current["draw"]["init_checkpoint_uri"],
            "mean_weights": current["draw"]["mean_weights"],
            "members": counts,
        }
    else:
        round_ = state["history"][-1]["round"] if state["history"] else 0
        progress = None
    config = state["config"]
    return {
        "id": state["id"],
        "name": state["name"],
        "status": state["status"],
        "failure": state["failure"],
        "round": round_,
        "rounds": config["rounds"],
        "population": config["population"],
        "loss_names": list(state["loss_names"]),
        "config": dict(config),
        "created_at": state["created_at"],
        "updated_at": state["updated_at"],
        "init_checkpoint_uri": state["init_checkpoint_uri"],
        "initial_losses": state["initial_losses"],
        "best": state["best"],
        "current": progress,
        "history": list(state["history"]),
    }


def policy_document(
    state: Mapping[str, Any], snapshots: Mapping[int, Mapping[str, Any]]
) -> dict[str, Any]:
    """``GET /v1/runs/{id}/policy``: every snapshot as plain lists, for any language."""
    return {
        "format": POLICY_FORMAT,
        "run": state["id"],
        "loss_names": list(state["loss_names"]),
        "rounds": state["config"]["rounds"],
        "initial_losses": state["initial_losses"],
        "snapshots": [{"round": t, **snapshots[t]} for t in sorted(snapshots)],
    }


def transfer_weights_for(
    state: Mapping[str, Any],
    snapshots: Mapping[int, dict[str, Any]],
    losses: Mapping[str, float] | None,
    epoch: int,
    epochs: int,
    mode: str = "ensemble",
    gamma: float = 0.9,
) -> dict[str, Any]:
    """Eq. 7 (or a Table 2 mode) over the run's snapshots: ``{weights, clipped, ...}``."""
    from controller_service.ensemble import transfer_weights

    names = state["loss_names"]
    vector = _vector(names, validate_losses(names, losses)) if losses is not None else None
    if not snapshots:
        raise RunConflict(
            f"run {state['id']} has no policy snapshot yet: weights are available "
            "once round 1 has completed"
        )
    best = state["best"]
    try:
        weights, clipped = transfer_weights(
            snapshots,
            vector,
            epoch,
            epochs,
            mode=mode,
            gamma=gamma,
            initial_losses=_vector(names, state["initial_losses"]),
            final_weights=_vector(names, best["weights"]),
            floor=WEIGHT_FLOOR,
            names=names,
        )
    except ValueError as exc:
        fields = {k: k for k in ("mode", "epoch", "epochs", "gamma", "losses")}
        raise RunInputError(_loc_of_message(str(exc), fields), str(exc)) from None
    return {
        "weights": _named(names, weights),
        "clipped": [names[i] for i in clipped],
        "mode": mode,
        "snapshots": len(snapshots),
    }


# -- the store-backed repository ----------------------------------------------------------------


class RunEvents:
    """What the repository tells the metrics; the base class ignores everything."""

    def lease_issued(self, reissued_expired: bool) -> None: ...

    def report(self, outcome: str) -> None:
        """``accepted``, ``duplicate`` or ``rejected``."""

    def round_completed(self, run_id: str) -> None:
        """A round is complete and written: new work (or ``finished``) for waiting workers."""


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    status: str
    completed_rounds: int
    best_pq: float | None


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def _dumps(value: Any) -> bytes:
    # allow_nan=False: the state must stay strict JSON, whatever slipped through
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


class StateEncoder:
    """Compact JSON of one run's state, re-encoding only what can change.

    Completed rounds (``history``), the draw of the open round and the policy
    state are never modified in place (a round completion replaces them), so
    their JSON is kept and reused while they are the same objects: a write
    costs O(members) instead of O(run). ``json.loads`` of the result equals
    the state.
    """

    def __init__(self) -> None:
        self._history: list[bytes] = []
        self._history_joined = b""
        self._parts: dict[str, tuple[Any, bytes]] = {}

    def _part(self, name: str, value: Any) -> bytes:
        cached = self._parts.get(name)
        if cached is None or cached[0] is not value:
            cached = (value, _dumps(value))
            self._parts[name] = cached
        return cached[1]

    def _history_json(self, history: Sequence[Any]) -> bytes:
        if len(self._history) != len(history):
            del self._history[len(history) :]
            while len(self._history) < len(history):
                self._history.append(_dumps(history[len(self._history)]))
            self._history_joined = b",".join(self._history)
        return self._history_joined

    def encode(self, state: Mapping[str, Any]) -> bytes:
        """One pass of small encodings and a single join (the history can be megabytes)."""
        head = _dumps({k: v for k, v in state.items() if k not in ("history", "current", "policy")})
        parts = [head[:-1], b',"policy":', self._part("policy", state["policy"]), b',"current":']
        current = state["current"]
        if current is None:
            parts.append(b"null")
        else:
            rest = _dumps({k: v for k, v in current.items() if k != "draw"})
            parts += [rest[:-1], b',"draw":', self._part("draw", current["draw"]), b"}"]
        parts += [b',"history":[', self._history_json(state["history"]), b"]}"]
        return b"".join(parts)


class _Slot:
    """One run in memory: its state, the versions written, and the writer's bookkeeping.

    ``version`` counts changes; ``persisted`` is the version in the store.
    ``generation`` changes when a write fails and the state is dropped: changes
    of an older generation were never written, and their requests fail.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.state: dict[str, Any] | None = None
        self.encoder = StateEncoder()
        self.version = 0
        self.persisted = 0
        self.generation = 0
        self.writing = False
        self.snapshots: dict[int, dict[str, Any]] = {}


class RunRepository:
    """Runs in an object store; every answer waits until what it says is in the store.

    Each run has a lock: a request applies its transition to the in-memory
    state under it. Writes of the state are batched (group commit): while one
    write is under way, the requests arriving meanwhile change the state and
    wait; the next write covers all of them at once. A request returns only
    after a write that includes its change (or everything it observed) has
    finished, so nothing a client was told is ever lost by a crash, and the
    throughput is not bounded by one fsync per request. When a write fails,
    the in-memory state is dropped (the store's copy is the truth) and every
    request waiting on it gets a StoreError (503; clients retry).

    Policy snapshots are written first, by the request that completes a round,
    before the state that refers to them. The service is a single replica, so
    the in-memory state is authoritative between writes.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        clock: Callable[[], float] = time.time,
        events: RunEvents | None = None,
        new_id: Callable[[], str] = new_run_id,
    ) -> None:
        self.store = store
        self._clock = clock
        self._events = events or RunEvents()
        self._new_id = new_id
        self._registry = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._scanned = False

    # -- internals --

    def _ensure_scanned(self) -> None:
        """Learn every run in the store once (lazily, so a store outage only delays it)."""
        if self._scanned:
            return
        with self._registry:
            if self._scanned:
                return
            for key in self.store.list("runs/"):
                parts = key.split("/")
                if len(parts) == 3 and parts[2] == "state.json" and _RUN_ID.match(parts[1]):
                    self._slots.setdefault(parts[1], _Slot())
            self._scanned = True

    def _slot(self, run_id: str) -> _Slot:
        self._ensure_scanned()
        with self._registry:
            slot = self._slots.get(run_id) if isinstance(run_id, str) else None
        if slot is None:
            raise RunNotFound(f"no run {run_id!r}")
        return slot

    def _load(self, run_id: str, slot: _Slot) -> dict[str, Any]:
        """The run's state (caller holds ``slot.cond``), read from the store if not in memory."""
        if slot.state is None:
            try:
                state = self.store.get_json(run_state_key(run_id))
            except ObjectNotFound:
                raise RunNotFound(f"no run {run_id!r}") from None
            if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
                raise StoreError(f"{run_state_key(run_id)} is not a run state ({STATE_FORMAT})")
            slot.state = state
            slot.encoder = StateEncoder()
        return slot.state

    def _durable(self, run_id: str, slot: _Slot, version: int) -> None:
        """Wait (caller holds ``slot.cond``) until ``version`` is in the store, writing
        batches as the leader when no other request is writing."""
        generation = slot.generation
        while slot.persisted < version:
            if slot.generation != generation:
                raise StoreError(f"run {run_id}: the state write failed; nothing was changed")
            if slot.writing:
                slot.cond.wait()
                continue
            slot.writing = True
            batch = slot.version
            data = slot.encoder.encode(slot.state)
            slot.cond.release()
            try:
                self.store.put(run_state_key(run_id), data)
                failure = None
            except Exception as exc:  # noqa: BLE001 - re-raised below as the store's error
                failure = exc
            finally:
                slot.cond.acquire()
                slot.writing = False
                slot.cond.notify_all()
            if failure is not None:
                slot.state = None
                slot.version = slot.persisted = 0
                slot.generation += 1
                if isinstance(failure, StoreError):
                    raise failure
                raise StoreError(f"run {run_id}: state write failed: {failure}") from failure
            slot.persisted = max(slot.persisted, batch)

    def _transact(self, run_id: str, change: Callable[[dict[str, Any]], tuple[Any, bool]]) -> Any:
        """Apply ``change`` (returns (result, changed)) and wait until it is durable.

        Every outcome, refusals included, waits for what it observed: a 409 or a
        ``duplicate`` may rest on a change that is still being written.
        """
        slot = self._slot(run_id)
        with slot.cond:
            state = self._load(run_id, slot)
            try:
                result, changed = change(state)
            except RunError:
                self._durable(run_id, slot, slot.version)
                raise
            if changed:
                slot.version += 1
            self._durable(run_id, slot, slot.version)
            return result

    def _snapshots_of(self, slot: _Slot, state: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
        for round_ in snapshot_rounds(state):
            if round_ not in slot.snapshots:
                key = policy_snapshot_key(state["id"], round_)
                slot.snapshots[round_] = self.store.get_json(key)
        return {t: slot.snapshots[t] for t in snapshot_rounds(state)}

    def _run_ids(self) -> list[str]:
        self._ensure_scanned()
        with self._registry:
            return sorted(self._slots)

    # -- API --

    def create(self, spec: RunSpec) -> dict[str, Any]:
        if spec.seed is None:  # random but recorded, so the run can be repeated
            spec = replace(spec, seed=secrets.randbelow(2**31))
        self._ensure_scanned()
        slot = _Slot()
        with self._registry:
            run_id = self._new_id()
            while run_id in self._slots:
                run_id = self._new_id()
            self._slots[run_id] = slot
        with slot.cond:
            try:
                slot.state = create_state(
                    run_id,
                    spec,
                    now=self._clock(),
                    init_checkpoint_uri=self.store.uri_of(init_checkpoint_key(run_id)),
                )
                slot.version = 1
                self._durable(run_id, slot, 1)
            except BaseException:
                with self._registry:
                    del self._slots[run_id]
                raise
            return run_record(slot.state)

    def get(self, run_id: str) -> dict[str, Any]:
        return self._transact(run_id, lambda state: (run_record(state), False))

    def list(self) -> list[dict[str, Any]]:
        records = [self.get(run_id) for run_id in self._run_ids()]
        return sorted(records, key=lambda r: (r["created_at"], r["id"]))

    def summaries(self) -> list[RunSummary]:
        """One line per run for the metrics (what is in memory; no waiting for writes)."""
        out = []
        for run_id in self._run_ids():
            slot = self._slot(run_id)
            with slot.cond:
                state = self._load(run_id, slot)
                best = state["best"]
                pq = best["pq"] if best else None
                out.append(RunSummary(run_id, state["status"], completed_rounds(state), pq))
        return out

    def lease(self, run_id: str, worker: str) -> dict[str, Any]:
        def change(state: dict[str, Any]) -> tuple[LeaseOutcome, bool]:
            outcome = lease(state, worker, now=self._clock(), uri_of=self.store.uri_of)
            return outcome, outcome.changed

        outcome = self._transact(run_id, change)
        if outcome.issued:
            self._events.lease_issued(outcome.reissued_expired)
        return outcome.answer

    def lease_many(self, run_id: str, workers: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Lease for several workers in one transaction (one lock, one write): how the
        service serves the workers held for a round when it opens."""

        def change(state: dict[str, Any]) -> tuple[dict[str, LeaseOutcome], bool]:
            outcomes = lease_many(state, workers, now=self._clock(), uri_of=self.store.uri_of)
            return outcomes, any(outcome.changed for outcome in outcomes.values())

        outcomes = self._transact(run_id, change)
        for outcome in outcomes.values():
            if outcome.issued:
                self._events.lease_issued(outcome.reissued_expired)
        return {worker: outcome.answer for worker, outcome in outcomes.items()}

    def heartbeat(self, run_id: str, aid: str) -> dict[str, Any]:
        return self._transact(run_id, lambda state: heartbeat(state, aid, now=self._clock()))

    def report(self, run_id: str, aid: str, rep: MemberReport) -> dict[str, Any]:
        def change(state: dict[str, Any]) -> tuple[ReportOutcome, bool]:
            outcome = report(state, aid, rep, now=self._clock(), before_change=write_snapshots)
            return outcome, outcome.accepted

        def write_snapshots(snapshots: Mapping[int, dict[str, Any]]) -> None:
            # before the state changes, so a failure here leaves the run as it was
            for round_, snapshot in snapshots.items():
                self.store.put_json(policy_snapshot_key(run_id, round_), snapshot)
            self._slot(run_id).snapshots.update(snapshots)

        try:
            outcome = self._transact(run_id, change)
        except RunError:
            self._events.report("rejected")
            raise
        self._events.report("accepted" if outcome.accepted else "duplicate")
        if outcome.completed_round is not None:
            self._events.round_completed(run_id)
        return outcome.answer

    def policy(self, run_id: str) -> dict[str, Any]:
        slot = self._slot(run_id)
        return self._transact(
            run_id, lambda state: (policy_document(state, self._snapshots_of(slot, state)), False)
        )

    def weights(
        self,
        run_id: str,
        losses: Mapping[str, float] | None,
        epoch: int,
        epochs: int,
        mode: str = "ensemble",
        gamma: float = 0.9,
    ) -> dict[str, Any]:
        slot = self._slot(run_id)

        def compute(state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
            snapshots = self._snapshots_of(slot, state)
            answer = transfer_weights_for(state, snapshots, losses, epoch, epochs, mode, gamma)
            return answer, False

        return self._transact(run_id, compute)

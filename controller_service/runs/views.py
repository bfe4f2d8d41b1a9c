"""Read-only views of a run: what the API answers, built from the typed state (no I/O).

Vectors become ``{name: value}`` objects here, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from controller_service.contract.keys import member_checkpoint_key
from controller_service.runs.errors import RunConflict, RunInputError
from controller_service.runs.spec import WEIGHT_FLOOR
from controller_service.runs.state import DONE, LEASED, PENDING, Member, RunState
from controller_service.search.base import JSON
from controller_service.search.options import DEFAULT_GAMMA, DEFAULT_TRANSFER_MODE, TRANSFER_MODES

POLICY_FORMAT = "adaseg-policy/v1"


def named(names: Sequence[str], values: Sequence[float] | None) -> dict[str, float] | None:
    if values is None:
        return None
    return {name: float(value) for name, value in zip(names, values, strict=True)}


def schedule_position(round_: int, rounds: int) -> tuple[int, int]:
    """``(epoch, epochs)``: where a round's interval lies in the trainers' LR schedule.

    Rounds 1..T train epochs 0..T-1 of one T-epoch schedule (0-based). Round 0,
    the pseudo epoch, starts from the same initial model as round 1 and trains
    at round 1's position, so the probe that gives l^1 sees the learning rate
    the first real epoch will see, and the schedule is not shortened by it.
    """
    return max(round_ - 1, 0), rounds


def assignment_id(round_: int, member: int, attempt: int) -> str:
    """Unique per issuance, so a report on an issuance that was replaced can be told apart."""
    return f"r{round_:03d}-m{member:02d}-a{attempt}"


def assignment_view(state: RunState, member: Member, uri_of: Callable[[str], str]) -> JSON:
    open_ = state.open
    assert open_ is not None and member.assignment_id is not None
    epoch, epochs = schedule_position(open_.round, state.spec.rounds)
    return {
        "id": member.assignment_id,
        "round": open_.round,
        "member": member.index,
        "attempt": member.attempts,
        "weights": named(state.spec.loss_names, open_.plan.candidates[member.index]),
        "init_checkpoint_uri": open_.init_checkpoint_uri,
        "checkpoint_uri": uri_of(member_checkpoint_key(state.id, open_.round, member.index)),
        "epoch": epoch,
        "epochs": epochs,
        "deadline": member.deadline,
        "lease_seconds": state.spec.lease_seconds,
    }


def round_record(
    state: RunState,
    rewards: Sequence[float | None],
    best_member: int | None,
    now: float,
    strategy_summary: Mapping[str, Any] | None = None,
) -> JSON:
    """The open round as completed: stored once under ``runs/{run}/rounds/``."""
    open_ = state.open
    assert open_ is not None
    names = state.spec.loss_names
    public = dict(open_.plan.public)
    clipped = list(public.pop("clipped_members", []))
    invalid = int(public.pop("invalid_draws", 0))
    candidates = []
    for member, reward in zip(open_.members, rewards, strict=True):
        result = member.result
        assert result is not None
        candidates.append(
            {
                "member": member.index,
                "weights": named(names, open_.plan.candidates[member.index]),
                "outcome": result.outcome,
                "pq": result.pq,
                "losses": named(names, result.losses),
                "reward": reward,
                "clipped": member.index in clipped,
                "checkpoint_uri": result.checkpoint_uri,
                "reason": result.reason,
                "has_metrics": result.has_metrics,
                "assignment_id": result.assignment_id,
                "worker": result.worker,
                "attempts": member.attempts,
                "failures": member.failures,
            }
        )
    return {
        "round": open_.round,
        "opened_at": open_.opened_at,
        "completed_at": now,
        "init_checkpoint_uri": open_.init_checkpoint_uri,
        "input_losses": named(names, open_.input_losses),
        "mean_weights": named(names, open_.plan.mean_weights),
        "candidates": candidates,
        "invalid_draws": invalid,
        "clipped_members": clipped,
        "strategy": {**public, **(strategy_summary or {})},
        "best_member": best_member,
    }


def member_counts(members: Sequence[Member]) -> dict[str, int]:
    counts = {PENDING: 0, LEASED: 0, DONE: 0}
    for member in members:
        counts[member.status] += 1
    counts["failed"] = sum(1 for m in members if m.result and m.result.outcome == "failed")
    return counts


def _progress(state: RunState) -> JSON | None:
    open_ = state.open
    if open_ is None:
        return None
    return {
        "round": open_.round,
        "opened_at": open_.opened_at,
        "init_checkpoint_uri": open_.init_checkpoint_uri,
        "mean_weights": named(state.spec.loss_names, open_.plan.mean_weights),
        "members": member_counts(open_.members),
    }


def run_record(state: RunState, history: Sequence[JSON] | None = None) -> JSON:
    """``GET /v1/runs/{id}``: the run without its completed rounds unless ``history``."""
    names = state.spec.loss_names
    open_ = state.open
    round_ = open_.round if open_ is not None else max(state.completed_rounds - 1, 0)
    best = state.best
    done_now = sum(1 for m in open_.members if m.status == DONE) if open_ else 0
    record = {
        "id": state.id,
        "name": state.spec.name,
        "strategy": state.spec.strategy,
        "status": state.status,
        "failure": state.failure,
        "round": round_,
        "rounds": state.spec.rounds,
        "completed_rounds": state.completed_rounds,
        "members_done": state.members_done + done_now,
        "population": state.spec.population,
        "loss_names": list(names),
        "config": state.spec.config(),
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "init_checkpoint_uri": state.init_checkpoint_uri,
        "initial_losses": named(names, state.initial_losses),
        "best": None
        if best is None
        else {
            "round": best.round,
            "member": best.member,
            "pq": best.pq,
            "losses": named(names, best.losses),
            "weights": named(names, best.weights),
            "checkpoint_uri": best.checkpoint_uri,
        },
        "current": _progress(state),
    }
    if history is not None:
        record["history"] = list(history)
    return record


def open_round_view(state: RunState) -> JSON:
    """``GET /v1/runs/{id}/rounds/current``: every member's lease (409 when no round is open)."""
    open_ = state.open
    if open_ is None:
        raise RunConflict(f"run {state.id} has no open round (it is {state.status})")
    names = state.spec.loss_names
    return {
        **(_progress(state) or {}),
        "weights": [named(names, c) for c in open_.plan.candidates],
        "leases": [
            {
                "member": m.index,
                "status": m.status,
                "attempts": m.attempts,
                "failures": m.failures,
                "assignment_id": m.assignment_id,
                "worker": m.worker,
                "deadline": m.deadline,
                "outcome": m.result.outcome if m.result else None,
                "last_failure": m.last_failure,
            }
            for m in open_.members
        ],
    }


@dataclass(frozen=True)
class RunSummary:
    """One line per run, for the metrics and the run list."""

    run_id: str
    status: str
    completed_rounds: int
    best_pq: float | None


def summary(state: RunState) -> RunSummary:
    best = state.best.pq if state.best else None
    return RunSummary(state.id, state.status, state.completed_rounds, best)


def snapshot_rounds(state: RunState, has_policy: bool) -> list[int]:
    """The rounds whose policy snapshot exists: the completed rounds 1..k."""
    return list(range(1, state.completed_rounds)) if has_policy else []


def policy_document(state: RunState, snapshots: Mapping[int, Mapping[str, Any]]) -> JSON:
    """``GET /v1/runs/{id}/policy``: every snapshot as plain lists, for any language."""
    return {
        "format": POLICY_FORMAT,
        "run": state.id,
        "loss_names": list(state.spec.loss_names),
        "rounds": state.spec.rounds,
        "initial_losses": named(state.spec.loss_names, state.initial_losses),
        "snapshots": [{"round": t, **snapshots[t]} for t in sorted(snapshots)],
    }


def transfer_weights_for(
    state: RunState,
    snapshots: Mapping[int, dict[str, Any]],
    losses: Mapping[str, float] | None,
    epoch: int,
    epochs: int,
    mode: str = DEFAULT_TRANSFER_MODE,
    gamma: float = DEFAULT_GAMMA,
) -> JSON:
    """Eq. 7 (or a Table 2 mode) over the run's snapshots: ``{weights, clipped, ...}``.

    ``static-final`` (the best member's weights) works for every strategy; the modes
    that evaluate the policy need snapshots, so they are 409 before round 1 completes
    and for strategies without a policy.
    """
    from controller_service.runs.reports import validate_losses
    from controller_service.search.ensemble import transfer_weights

    _check_weights_request(epoch, epochs, mode, gamma)
    names = state.spec.loss_names
    vector = list(validate_losses(names, losses).values()) if losses is not None else None
    if vector is None and mode in ("ensemble", "final"):
        raise RunInputError(("losses",), f"mode {mode!r} needs the losses of the epoch")
    if state.best is None or (not snapshots and mode != "static-final"):
        why = (
            f"strategy {state.spec.strategy!r} has no policy: only mode 'static-final' applies"
            if state.completed_rounds > 1
            else "weights are available once round 1 has completed"
        )
        raise RunConflict(f"run {state.id} has no policy snapshot: {why}")
    if mode == "static-final" and state.completed_rounds < 2:
        raise RunConflict(f"run {state.id}: weights are available once round 1 has completed")
    try:
        weights, clipped = transfer_weights(
            snapshots,
            vector,
            epoch,
            epochs,
            mode=mode,
            gamma=gamma,
            initial_losses=list(state.initial_losses or ()),
            final_weights=list(state.best.weights),
            floor=WEIGHT_FLOOR,
            names=names,
            weight_scale=state.spec.weight_scale,
        )
    except ValueError as exc:  # the request was checked above: the snapshots are at fault
        raise RunConflict(f"run {state.id}: its policy snapshots cannot be used: {exc}") from None
    return {
        "weights": named(names, weights),
        "clipped": [names[i] for i in clipped],
        "mode": mode,
        "snapshots": len(snapshots),
    }


def _check_weights_request(epoch: object, epochs: object, mode: object, gamma: object) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise RunInputError(("epochs",), f"must be an integer >= 1, got {epochs!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs:
        raise RunInputError(("epoch",), f"must be an integer in 0..{epochs}, got {epoch!r}")
    if mode not in TRANSFER_MODES:
        raise RunInputError(("mode",), f"must be one of {list(TRANSFER_MODES)}, got {mode!r}")
    if not (isinstance(gamma, Real) and not isinstance(gamma, bool) and 0 < gamma <= 1):
        raise RunInputError(("gamma",), f"must be a number in (0, 1], got {gamma!r}")

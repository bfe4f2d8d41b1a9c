"""The run state machine: leases, heartbeats, reports and round completion, without I/O.

Every transition takes the current :class:`RunState` and returns a
:class:`Change`: the new state (never the old one modified), the answer, which
members changed (what the repository logs), whether the whole state must be
rewritten (a round completed, the run ended) and which objects must be stored
before it (round records, policy snapshots, report metrics). Everything is
checked before anything is built, so a refused request (a :class:`RunError`)
leaves the state as it was. ``now`` is an argument, so tests drive leases with a
fake clock.

Choices where the paper is silent (docs/design.md repeats them):

* Round 0, the pseudo epoch, has one member (all weights 1) that starts from
  ``init.pt``; its losses are l^1 and its PQ v_best_0. If it cannot be trained
  (diverged, or failed ``max_attempts`` times) the run fails.
* ``best`` is the model the next round starts from: the best member of the
  latest round that had a trained member; ties go to the lower member index.
  When no member of a round is trained, ``best`` stays and the next round
  starts again from the same checkpoint; when every member *failed* (the
  trainers could not work, e.g. an unreadable start checkpoint), the run fails
  with their reasons instead of spending its remaining rounds on the same error.
* Leases are issued pending members first, then members whose lease expired,
  lowest index first: a member that keeps failing cannot starve the others.
  Expiry is evaluated lazily when a lease is asked for: an expired lease that
  was not issued again can still heartbeat and report (late work loses
  nothing). A member whose attempts ended ``max_attempts`` times in a failed
  report or an expired lease is given up: recorded as failed (reward -1, never
  best), so its round completes.
* A worker that leases while it holds a lease of the open round gets that
  assignment back (fresh deadline), so a retried lease strands nothing.
* A repeated report of an accepted assignment answers ``duplicate`` and changes
  nothing; a second report that says something else is 409.
* If the search strategy cannot go on (its maths left the finite numbers), the
  run fails with the reason; the report that got it there is still accepted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from controller_service.contract import limits as L
from controller_service.contract.keys import (
    policy_snapshot_key,
    report_metrics_key,
    round_record_key,
)
from controller_service.runs.errors import RunConflict, RunInputError, RunNotFound
from controller_service.runs.reports import CheckedReport, MemberReport, check_report
from controller_service.runs.spec import RunSpec
from controller_service.runs.state import (
    DONE,
    FAILED,
    FINISHED,
    LEASED,
    PENDING,
    RUNNING,
    Best,
    Member,
    MemberResult,
    OpenRound,
    RunState,
    Start,
)
from controller_service.runs.views import assignment_id, assignment_view, round_record
from controller_service.search.base import (
    JSON,
    MemberOutcome,
    RoundPlan,
    RoundStart,
    SearchStrategy,
    StrategyError,
)
from controller_service.search.policy import is_valid_weight_vector

RETRY_AFTER_MIN, RETRY_AFTER_MAX = 0.05, 2.0


@dataclass(frozen=True)
class Context:
    """What transitions need from outside the state: the clock, the store's URIs, the
    strategy, and the accepted assignment of a member of a completed round."""

    now: float
    uri_of: Callable[[str], str]
    strategy: SearchStrategy
    # (assignment id, report) that completed member j of a completed round t, if known
    accepted: Callable[[int, int], tuple[str, CheckedReport] | None] = lambda t, j: None

    def run_prefix_uri(self, run_id: str) -> str:
        return self.uri_of(f"runs/{run_id}/x")[:-1]


@dataclass
class Change:
    """A transition's outcome (see the module docstring)."""

    state: RunState
    answer: Any
    members: set[int] = field(default_factory=set)
    rebase: bool = False
    issued: list[bool] = field(default_factory=list)  # per new lease: re-issued after expiry?
    completed_round: int | None = None
    record: JSON | None = None  # the completed round's record
    snapshot: JSON | None = None  # its policy snapshot pi^t (strategies with a policy)
    metrics: tuple[int, int, JSON] | None = None  # (round, member, a report's metrics)

    @property
    def changed(self) -> bool:
        return self.rebase or bool(self.members)

    def writes(self, run_id: str) -> dict[str, JSON]:
        """The objects the new state refers to, by key: stored before it, in this order."""
        out: dict[str, JSON] = {}
        if self.metrics is not None:
            round_, member, metrics = self.metrics
            out[report_metrics_key(run_id, round_, member)] = metrics
        if self.completed_round is not None:
            if self.snapshot is not None:
                out[policy_snapshot_key(run_id, self.completed_round)] = self.snapshot
            if self.record is not None:
                out[round_record_key(run_id, self.completed_round)] = self.record
        return out


# -- creation -----------------------------------------------------------------------------------


def _open(round_: int, now: float, init_uri: str, input_losses: Any, plan: RoundPlan) -> OpenRound:
    return OpenRound(
        round=round_,
        opened_at=now,
        init_checkpoint_uri=init_uri,
        input_losses=input_losses,
        plan=plan,
        members=tuple(Member(index=j) for j in range(len(plan.candidates))),
    )


def create_state(
    run_id: str, spec: RunSpec, *, now: float, init_checkpoint_uri: str, strategy: SearchStrategy
) -> RunState:
    """A run waiting for its pseudo epoch; ``spec.seed`` must be set (the repository draws one)."""
    if spec.seed is None:
        raise RunInputError(("seed",), "create_state needs a seed (draw one if the user gave none)")
    ones = RoundPlan(candidates=((1.0,) * len(spec.loss_names),))
    return RunState(
        id=run_id,
        spec=spec,
        created_at=now,
        updated_at=now,
        init_checkpoint_uri=init_checkpoint_uri,
        strategy_state=strategy.initial_state(),
        open=_open(0, now, init_checkpoint_uri, None, ones),
    )


# -- leases -------------------------------------------------------------------------------------


def _expired(member: Member, now: float) -> bool:
    return member.status == LEASED and member.deadline is not None and member.deadline <= now


def _retry_after(members: Sequence[Member], now: float) -> float:
    remaining = [m.deadline - now for m in members if m.status == LEASED and m.deadline]
    soonest = min(remaining, default=RETRY_AFTER_MAX)
    return round(min(max(soonest, RETRY_AFTER_MIN), RETRY_AFTER_MAX), 3)


def _check_worker(worker: object) -> None:
    if not isinstance(worker, str) or not worker.strip() or len(worker) > L.MAX_NAME_LENGTH:
        raise RunInputError(
            ("worker",), f"must be a non-blank string of at most {L.MAX_NAME_LENGTH} chars"
        )


def _give_up_expired(change: Change, ctx: Context) -> None:
    """Members whose lease expired for the last allowed time become failed (in ``change``)."""
    state = change.state
    assert state.open is not None
    for member in state.open.members:
        if _expired(member, ctx.now) and member.failures + 1 >= state.spec.max_attempts:
            reason = (
                f"lease expired without a report ({member.failures + 1} failed attempts; "
                f"last worker {member.worker})"
            )
            given_up = replace(
                member,
                failures=member.failures + 1,
                last_failure=reason,
                status=DONE,
                deadline=None,
                result=MemberResult("failed", member.assignment_id or "", member.worker or "",
                                    ctx.now, reason=reason),
            )  # fmt: skip
            change.state = state = state.with_member(given_up, ctx.now)
            change.members.add(member.index)


def lease_many(state: RunState, workers: Sequence[str], ctx: Context) -> Change:
    """Lease for several workers in order, in one transaction (see the module docstring)."""
    for worker in workers:
        _check_worker(worker)
    if state.status == FINISHED:
        return Change(state, {w: {"state": "finished"} for w in workers})
    if state.status == FAILED:
        raise RunConflict(f"run {state.id} failed: {state.failure}")
    change = Change(state, {})
    _give_up_expired(change, ctx)
    _complete_if_done(change, ctx)
    state = change.state
    if state.status != RUNNING or state.open is None:
        # giving a member up just ended the run: answer now, keep the change; a lease on a
        # failed run is 409 from the next request on
        done = {"state": "finished"} if state.status == FINISHED else None
        wait = {"state": "wait", "retry_after": RETRY_AFTER_MAX}
        change.answer = {w: dict(done or wait) for w in workers}
        return change
    members = list(state.open.members)  # changed in place here, swapped in once at the end
    holders = {m.worker: m.index for m in members if m.status == LEASED}
    candidates = deque(m.index for m in members if m.status == PENDING)
    candidates.extend(m.index for m in members if _expired(m, ctx.now))
    answers: dict[str, Any] = {}
    for worker in workers:
        held = holders.get(worker)
        member = members[held] if held is not None else None
        if member is None or member.worker != worker or member.status != LEASED:
            # the next member still free: pending, or leased by someone whose lease expired
            while candidates and not _free(members[candidates[0]], ctx.now):
                candidates.popleft()
            if not candidates:
                answers[worker] = None
                continue
            member = members[candidates.popleft()]
            reissued = member.status == LEASED
            member = replace(
                member,
                status=LEASED,
                attempts=member.attempts + 1,
                failures=member.failures + (1 if reissued else 0),
                last_failure="lease expired without a report" if reissued else member.last_failure,
                assignment_id=assignment_id(state.open.round, member.index, member.attempts + 1),
                worker=worker,
            )
            holders[worker] = member.index
            change.issued.append(reissued)
        members[member.index] = member = replace(
            member, deadline=ctx.now + state.spec.lease_seconds
        )
        change.members.add(member.index)
        answers[worker] = member
    opened = replace(state.open, members=tuple(members))
    change.state = state = replace(state, open=opened, updated_at=ctx.now)
    wait = {"state": "wait", "retry_after": _retry_after(opened.members, ctx.now)}
    change.answer = {
        w: dict(wait)
        if m is None
        else {"state": "assigned", "assignment": assignment_view(state, m, ctx.uri_of)}
        for w, m in answers.items()
    }
    return change


def _free(member: Member, now: float) -> bool:
    return member.status == PENDING or _expired(member, now)


# -- finding an assignment ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """Where an assignment id points: a member of the open round, or of a completed one."""

    round_: int
    member_index: int
    open_member: Member | None
    accepted: tuple[str, CheckedReport] | None  # the report that completed the member

    @property
    def accepted_id(self) -> str | None:
        return self.accepted[0] if self.accepted else None


def _parse_assignment_id(value: object) -> tuple[int, int, int] | None:
    if not isinstance(value, str) or not value.startswith("r"):
        return None
    try:
        round_part, member_part, attempt_part = value[1:].split("-")
        if member_part[0] != "m" or attempt_part[0] != "a":
            return None
        parsed = int(round_part), int(member_part[1:]), int(attempt_part[1:])
    except (ValueError, IndexError):
        return None
    return parsed if assignment_id(*parsed) == value and parsed[2] >= 1 else None


def _find(state: RunState, aid: str, ctx: Context) -> _Target:
    unknown = RunNotFound(f"run {state.id} has no assignment {aid!r}")
    parsed = _parse_assignment_id(aid)
    if parsed is None:
        raise unknown
    round_, j, attempt = parsed
    open_ = state.open
    if open_ is not None and round_ == open_.round:
        if j >= len(open_.members) or attempt > open_.members[j].attempts:
            raise unknown
        member = open_.members[j]
        result = member.result
        accepted = (result.assignment_id, _as_checked(result)) if result is not None else None
        return _Target(round_, j, member, accepted)
    if 0 <= round_ < state.completed_rounds:
        size = 1 if round_ == 0 else state.spec.population
        if j >= size:
            raise unknown
        return _Target(round_, j, None, ctx.accepted(round_, j))
    raise unknown


def _stale(target: _Target, aid: str) -> RunConflict:
    if target.accepted is not None:
        return RunConflict(
            f"assignment {aid} is stale: member {target.member_index} of round {target.round_} "
            f"was already completed by assignment {target.accepted_id}"
        )
    current = target.open_member.assignment_id if target.open_member else None
    return RunConflict(
        f"assignment {aid} is stale: its lease was lost and member {target.member_index} "
        f"of round {target.round_} was issued again ({current or 'pending'})"
    )


def heartbeat(state: RunState, aid: str, ctx: Context) -> Change:
    """Extend the lease of ``aid``. A heartbeat after the assignment's own report answers
    ``reported`` (the trainer's heartbeat thread may race with its report); any other
    stale id is 409."""
    target = _find(state, aid, ctx)
    if target.accepted_id == aid:
        return Change(state, {"assignment_id": aid, "state": "reported", "deadline": None})
    member = target.open_member
    if member is None or member.status != LEASED or member.assignment_id != aid:
        raise _stale(target, aid)
    member = replace(member, deadline=ctx.now + state.spec.lease_seconds)
    answer = {"assignment_id": aid, "state": "leased", "deadline": member.deadline}
    return Change(state.with_member(member, ctx.now), answer, members={member.index})


# -- reports ------------------------------------------------------------------------------------


def _report_answer(state: RunState, target: _Target, aid: str, accepted: bool, done: bool) -> Any:
    return {
        "assignment_id": aid,
        "round": target.round_,
        "member": target.member_index,
        "state": "accepted" if accepted else "duplicate",
        "round_completed": done,
        "run_status": state.status,
    }


def _as_checked(result: MemberResult) -> CheckedReport:
    return CheckedReport(
        result.outcome, result.losses, result.pq, result.checkpoint_uri, result.reason
    )


def report(state: RunState, aid: str, rep: MemberReport, ctx: Context) -> Change:
    """Record a member's result; the last one completes the round (the strategy closes it and
    opens the next). A ``failed`` report puts the member back in the queue, or gives it up."""
    checked = check_report(state.spec.loss_names, rep, ctx.run_prefix_uri(state.id))
    target = _find(state, aid, ctx)
    member = target.open_member
    if target.accepted is not None and target.accepted[0] == aid:
        if not target.accepted[1].same_as(checked):
            raise RunConflict(
                f"assignment {aid} was already reported with different results; "
                "a report is accepted once"
            )
        return Change(state, _report_answer(state, target, aid, False, False))
    if member is not None and checked.outcome == "failed" and member.last_failed_id == aid:
        if member.last_failure != checked.reason:
            raise RunConflict(f"assignment {aid} was already reported failed for another reason")
        return Change(state, _report_answer(state, target, aid, False, False))
    if member is None or member.status != LEASED or member.assignment_id != aid:
        raise _stale(target, aid)

    change = Change(state, None, members={member.index})
    if checked.metrics is not None:
        change.metrics = (target.round_, member.index, checked.metrics)
    result = MemberResult(
        outcome=checked.outcome,  # type: ignore[arg-type]
        assignment_id=aid,
        worker=member.worker or "",
        reported_at=ctx.now,
        losses=checked.losses,
        pq=checked.pq,
        checkpoint_uri=checked.checkpoint_uri,
        reason=checked.reason,
        has_metrics=checked.metrics is not None,
    )
    if checked.outcome == "failed":
        failures = member.failures + 1
        member = replace(member, failures=failures, last_failure=checked.reason,
                         last_failed_id=aid, worker=None, deadline=None)  # fmt: skip
        if failures >= state.spec.max_attempts:
            member = replace(member, status=DONE, result=result)
        else:
            member = replace(member, status=PENDING, assignment_id=None)
    else:
        member = replace(member, status=DONE, deadline=None, result=result)
    change.state = state.with_member(member, ctx.now)
    _complete_if_done(change, ctx)
    change.answer = _report_answer(
        change.state, target, aid, True, change.completed_round is not None
    )
    return change


# -- round completion ---------------------------------------------------------------------------


def _fail(state: RunState, reason: str) -> RunState:
    return replace(state, status=FAILED, failure=reason, open=None)


def _open_next(state: RunState, round_: int, start: Start, ctx: Context) -> RunState:
    """Open round ``round_`` from ``start`` with the strategy; a strategy that cannot, or
    that draws anything but valid weights, fails the run instead."""
    try:
        begin = RoundStart(round_, start.losses, start.weights, start.pq)
        plan, strategy_state = ctx.strategy.open_round(state.strategy_state, begin)
        if len(plan.candidates) != state.spec.population or not all(
            len(c) == len(state.spec.loss_names) and is_valid_weight_vector(c)  # type: ignore[arg-type]
            for c in plan.candidates
        ):
            raise StrategyError(
                f"round {round_}'s candidates are not {state.spec.population} valid weight vectors"
            )
    except StrategyError as exc:
        return _fail(state, f"the search strategy cannot open round {round_}: {exc}")
    opened = _open(round_, ctx.now, start.checkpoint_uri, start.losses, plan)
    return replace(state, open=opened, strategy_state=strategy_state)


def _failure_summary(members: Sequence[Member]) -> str:
    reasons = sorted({m.result.reason or "" for m in members if m.result})
    return "; ".join(r[:300] for r in reasons[:3])


def _complete_if_done(change: Change, ctx: Context) -> None:
    """Close the open round if every member is done, and open the next one (in ``change``)."""
    state = change.state
    open_ = state.open
    if open_ is None or not all(m.status == DONE for m in open_.members):
        return
    results = [m.result for m in open_.members]
    assert all(r is not None for r in results)
    round_, rounds = open_.round, state.spec.rounds
    rewards: tuple[float | None, ...] = (None,) * len(results)
    best_member: int | None = None
    summary: dict[str, Any] = {}
    updates: dict[str, Any] = {}
    if round_ == 0:
        result = results[0]
        if result.outcome != "trained":
            new = _fail(state, f"round 0 (the pseudo epoch) {result.outcome}: {result.reason}")
        else:
            best_member = 0
            ones = open_.plan.candidates[0]
            best = Best(0, 0, result.pq, result.losses, ones, result.checkpoint_uri)
            start = Start(state.init_checkpoint_uri, result.losses, ones, result.pq, 0, 0)
            new = replace(state, initial_losses=result.losses, best=best, start=start)
            new = _open_next(new, 1, start, ctx)
    elif all(r.outcome == "failed" for r in results):
        new = _fail(
            state, f"every member of round {round_} failed: {_failure_summary(open_.members)}"
        )
    else:
        outcomes = [MemberOutcome(r.outcome, r.pq, r.losses) for r in results]  # type: ignore[arg-type]
        try:
            closed = ctx.strategy.close_round(
                state.strategy_state, open_.plan, open_.start(state.start), outcomes
            )
        except StrategyError as exc:
            closed = None
            new = _fail(state, f"the search strategy cannot close round {round_}: {exc}")
        if closed is not None:
            rewards, best_member, summary = closed.rewards, closed.best_member, closed.public
            change.snapshot = closed.snapshot
            new = replace(state, strategy_state=closed.state)
            if best_member is not None:
                r = results[best_member]
                weights = open_.plan.candidates[best_member]
                best = Best(round_, best_member, r.pq, r.losses, weights, r.checkpoint_uri)
                start = Start(r.checkpoint_uri, r.losses, weights, r.pq, round_, best_member)
                new = replace(new, best=best, start=start)
            if round_ == rounds:
                new = replace(new, status=FINISHED, open=None)
            else:
                new = _open_next(new, round_ + 1, new.start, ctx)
    change.record = round_record(state, rewards, best_member, ctx.now, summary)
    updates = {
        "completed_rounds": state.completed_rounds + 1,
        "members_done": state.members_done + len(results),
        "updated_at": ctx.now,
    }
    change.state = replace(new, **updates)
    change.rebase = True
    change.completed_round = round_

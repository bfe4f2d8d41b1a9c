"""How a run's state lies in the store: a base document and a log of member changes.

``runs/{run}/state.json`` (the *base*) holds the whole state; it is rewritten when
a round completes (once per round) and when the log has grown long. Between
two bases, each group commit appends one log object
``runs/{run}/log/{base:06d}-{seq:06d}.json`` holding only the members that
changed. So a write costs what it changes, not what the run has done: the
bytes written per round grow with the population m, not with the round number.
Loading reads the base and its log in order; objects of older bases are ignored
(and deleted once a newer base is durable).

Stores written by the first state format (``adaseg-run-state/v1``: one
``state.json`` with the whole history, rewritten on every write) are migrated
on load: their completed rounds become round records, their report metrics
report objects, and their state a v2 base.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from controller_service.contract.keys import (
    report_metrics_key,
    round_record_key,
)
from controller_service.runs.spec import RunSpec
from controller_service.runs.state import (
    STATE_FORMAT,
    Best,
    LoadedRun,
    Member,
    MemberResult,
    OpenRound,
    RunState,
    Start,
    member_from_json,
    member_to_json,
    state_from_json,
    state_to_json,
)
from controller_service.search.base import JSON, RoundPlan

LOG_FORMAT = "adaseg-run-log/v1"
V1_FORMAT = "adaseg-run-state/v1"


def dumps(value: Any) -> bytes:
    """Compact strict JSON: a non-finite number is a ValueError, never a stored NaN."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def encode_base(state: RunState, base: int) -> bytes:
    return dumps(state_to_json(state, base))


def encode_member(member: Member) -> bytes:
    """One member's record, as it goes into a log object (encoded once, when it changes)."""
    return dumps(member_to_json(member))


def encode_log(base: int, seq: int, at: float, members: Mapping[int, bytes]) -> bytes:
    """A log object from members already encoded by :func:`encode_member`."""
    body = b",".join(b'"%d":%s' % (j, data) for j, data in sorted(members.items()))
    head = dumps({"format": LOG_FORMAT, "base": base, "seq": seq, "at": at})
    return head[:-1] + b',"members":{' + body + b"}}"


def apply_log(state: RunState, log: Mapping[str, Any]) -> RunState:
    """The state after one log object."""
    if log.get("format") != LOG_FORMAT or state.open is None:
        raise ValueError(f"not a log of an open round: {log.get('format')!r}")
    for raw in log["members"].values():
        state = state.with_member(member_from_json(raw), max(state.updated_at, log["at"]))
    return state


def decode_base(value: Mapping[str, Any]) -> tuple[RunState, int]:
    if value.get("format") != STATE_FORMAT:
        raise ValueError(f"not a run state ({STATE_FORMAT}): {value.get('format')!r}")
    return state_from_json(value), int(value["base"])


# -- migration from v1 --------------------------------------------------------------------------


def _vec(names: Sequence[str], values: Mapping[str, float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(values[n]) for n in names)


def _v1_result(raw: Mapping[str, Any] | None, names: Sequence[str]) -> MemberResult | None:
    if raw is None:
        return None
    return MemberResult(
        outcome="diverged" if raw.get("diverged") else "trained",
        assignment_id=raw["assignment_id"],
        worker=raw.get("worker") or "",
        reported_at=raw.get("reported_at") or 0.0,
        losses=_vec(names, raw.get("losses")),
        pq=raw.get("pq"),
        checkpoint_uri=raw.get("checkpoint_uri"),
        reason=raw.get("reason"),
        has_metrics=raw.get("metrics") is not None,
    )


def _v1_round_record(run_id: str, record: Mapping[str, Any]) -> tuple[JSON, dict[str, JSON]]:
    """A v1 history item as a round record, and the report metrics it held inline."""
    metrics: dict[str, JSON] = {}
    candidates = []
    for c in record["candidates"]:
        if not c.get("valid", True):
            continue  # v1 listed every invalid draw; v2 counts them
        if c.get("metrics") is not None:
            metrics[report_metrics_key(run_id, record["round"], c["member"])] = c["metrics"]
        candidates.append(
            {
                "member": c["member"],
                "weights": c["weights"],
                "outcome": "diverged" if c.get("diverged") else "trained",
                "pq": c.get("pq"),
                "losses": c.get("losses"),
                "reward": c.get("reward"),
                "clipped": c.get("clipped", False),
                "checkpoint_uri": c.get("checkpoint_uri"),
                "reason": c.get("reason"),
                "has_metrics": c.get("metrics") is not None,
                "assignment_id": c.get("assignment_id"),
                "worker": c.get("worker"),
                "attempts": c.get("attempts", 1),
                "failures": 0,
            }
        )
    converted = {
        "round": record["round"],
        "opened_at": record["opened_at"],
        "completed_at": record["completed_at"],
        "init_checkpoint_uri": record["init_checkpoint_uri"],
        "input_losses": record.get("input_losses"),
        "mean_weights": record.get("mean_weights"),
        "candidates": candidates,
        "invalid_draws": record.get("invalid_draws", 0),
        "clipped_members": record.get("clipped_members", []),
        "strategy": {},
        "best_member": record.get("best_member"),
    }
    return converted, metrics


def migrate_v1(v1: Mapping[str, Any]) -> LoadedRun:
    """A v1 state as a v2 base (numbered 1), with the objects to write before it."""
    names = list(v1["loss_names"])
    spec = RunSpec.from_config(names, {**v1["config"], "name": v1.get("name")})
    writes: dict[str, Any] = {}
    for record in v1["history"]:
        converted, metrics = _v1_round_record(v1["id"], record)
        writes[round_record_key(v1["id"], record["round"])] = converted
        writes.update(metrics)
    best = v1.get("best")
    start = v1.get("start")
    current = v1.get("current")
    open_ = None
    if current is not None:
        draw = current["draw"]
        invalid = draw.get("invalid_draws") or {"members": [], "weights": {}}
        rows = [list(r) for r in zip(*(invalid["weights"][n] for n in names), strict=True)]
        counts = [0] * len(current["members"])
        for j in invalid["members"]:
            counts[j] += 1
        plan = RoundPlan(
            candidates=tuple(_vec(names, c) for c in draw["candidates"]),  # type: ignore[misc]
            mean_weights=_vec(names, draw.get("mean_weights")) if current["round"] >= 1 else None,
            public={
                "invalid_draws": len(rows),
                "invalid_by_member": counts,
                "clipped_members": list(draw.get("clipped_members", [])),
            }
            if current["round"] >= 1
            else {},
            private={"input_losses": list(_vec(names, draw["input_losses"]) or ()), "invalid": rows}
            if current["round"] >= 1
            else {},
        )
        members = []
        for m in current["members"]:
            result = m.get("result")
            if result is not None and result.get("metrics") is not None:
                key = report_metrics_key(v1["id"], current["round"], m["member"])
                writes[key] = result["metrics"]
            members.append(
                Member(
                    index=m["member"],
                    status=m["status"],
                    attempts=m["attempts"],
                    assignment_id=m.get("assignment_id"),
                    worker=m.get("worker"),
                    deadline=m.get("deadline"),
                    result=_v1_result(result, names),
                )
            )
        open_ = OpenRound(
            round=current["round"],
            opened_at=current["opened_at"],
            init_checkpoint_uri=draw["init_checkpoint_uri"],
            input_losses=_vec(names, draw.get("input_losses")),
            plan=plan,
            members=tuple(members),
        )
    history = v1["history"]
    state = RunState(
        id=v1["id"],
        spec=spec,
        created_at=v1["created_at"],
        updated_at=v1["updated_at"],
        init_checkpoint_uri=v1["init_checkpoint_uri"],
        strategy_state={"policy": v1["policy"]},
        status=v1["status"],
        failure=v1.get("failure"),
        initial_losses=_vec(names, v1.get("initial_losses")),
        best=None
        if best is None
        else Best(
            round=best["round"],
            member=best["member"],
            pq=best["pq"],
            losses=_vec(names, best["losses"]),  # type: ignore[arg-type]
            weights=_vec(names, best["weights"]),  # type: ignore[arg-type]
            checkpoint_uri=best["checkpoint_uri"],
        ),
        start=None
        if start is None or best is None
        else Start(
            checkpoint_uri=start["checkpoint_uri"],
            losses=_vec(names, start["losses"]),  # type: ignore[arg-type]
            weights=_vec(names, best["weights"]),  # type: ignore[arg-type]
            pq=best["pq"],
            round=best["round"],
            member=best["member"],
        ),
        completed_rounds=len(history),
        members_done=sum(
            sum(1 for c in item["candidates"] if c.get("valid", True)) for item in history
        ),
        open=open_,
    )
    return LoadedRun(state=state, base=1, seq=0, migrated=writes)


def is_v1(value: Mapping[str, Any]) -> bool:
    return value.get("format") == V1_FORMAT

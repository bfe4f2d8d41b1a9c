"""What a transfer run would get from a run's policy: Eq. 7 over the run's own loss history.

A transfer run of E epochs asks, after epoch e with losses l^e, for the weights
of epoch e+1 (:func:`controller_service.search.ensemble.transfer_weights`, mode
``ensemble``). The policy page shows that schedule before anyone starts such a
run, replaying the search's own losses as if they were the transfer run's:
l^0 is the pseudo epoch's losses (round 0) and l^e the broadcast member's
losses of round e, with E = k, the number of policy snapshots (k = T once the
run is finished). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller_service.search.options import DEFAULT_GAMMA
from controller_service.ui.charts import broadcast_member, trained


@dataclass(frozen=True)
class TransferPlan:
    """``weights[e]`` are the weights of epoch e+1, computed from ``losses[e]`` (= l^e)."""

    loss_names: list[str]
    epochs: int
    gamma: float
    losses: list[dict[str, float]]
    weights: list[dict[str, float]]
    clipped: list[list[str]]


def loss_history(rounds: Sequence[Mapping[str, Any]], epochs: int) -> list[dict[str, float]]:
    """l^0..l^{epochs-1}: round 0's losses, then each round's broadcast member's losses
    (the previous ones again after a round in which every member diverged)."""
    by_round = {r["round"]: r for r in rounds}
    history: list[dict[str, float]] = []
    for e in range(epochs):
        record = by_round.get(e)
        member = None
        if record is not None:
            member = broadcast_member(record) or (trained(record)[0] if e == 0 else None)
        if member is not None and member.get("losses"):
            history.append(dict(member["losses"]))
        elif history:
            history.append(history[-1])
        else:
            raise ValueError(f"no losses for epoch {e}: round {e} has no trained member")
    return history


def transfer_plan(
    policy: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]], gamma: float = DEFAULT_GAMMA
) -> TransferPlan | None:
    """The Eq. 7 weights of every epoch of a transfer run as long as the search has snapshots;
    None before the first snapshot."""
    from controller_service.search.ensemble import transfer_weights  # numpy, policy maths

    snapshots = {s["round"]: s for s in policy.get("snapshots", [])}
    if not snapshots:
        return None
    names = list(policy["loss_names"])
    epochs = len(snapshots)
    losses = loss_history(rounds, epochs)
    weights, clipped = [], []
    for e, l_e in enumerate(losses):
        values, clipped_at = transfer_weights(
            snapshots, [l_e[n] for n in names], e, epochs, mode="ensemble", gamma=gamma, names=names
        )
        weights.append(dict(zip(names, values, strict=True)))
        clipped.append([names[i] for i in clipped_at])
    return TransferPlan(names, epochs, gamma, losses, weights, clipped)

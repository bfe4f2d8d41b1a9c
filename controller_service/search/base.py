"""The search-strategy interface: what a round asks of an algorithm, and nothing else.

The run state machine (``controller_service.runs``) owns the lifecycle of a
search: the pseudo epoch, leases, reports, retries, the broadcast of the best
checkpoint and every write to the store. A strategy owns the *choice of loss
weights*, behind two verbs, as Katib's suggestion services and Ray Tune's PBT
scheduler keep the algorithm apart from the trials:

* :meth:`SearchStrategy.open_round` — given where the round starts (the
  broadcast member's losses, weights and PQ), draw the m candidates;
* :meth:`SearchStrategy.close_round` — given every member's outcome, pick the
  best member, update itself and return what to store (a policy snapshot, if
  the strategy has a policy).

Both are pure: a strategy keeps its state in a JSON document that it receives
and returns (the state machine stores it with the run), and every random number
comes from that state, so a run is bit-identical for a seed and for the same
reports, across controller restarts. A new algorithm (random search, a learned
one) is one new module with one ``@register``-ed class, named in
``search.options.STRATEGY_MODULES`` (modules are imported on first use: Ada-Segment's
imports torch, which the service loads in the background after it starts).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from controller_service.search.options import STRATEGY_MODULES

JSON = dict[str, Any]
Outcome = Literal["trained", "diverged", "failed"]


class StrategyError(ValueError):
    """The strategy cannot go on with this run (its maths left the finite numbers):
    the state machine fails the run with this message instead of refusing a report."""


@dataclass(frozen=True)
class StrategySettings:
    """The run options a strategy reads; each strategy documents which fields it uses."""

    n_losses: int
    population: int
    rounds: int
    seed: int
    sigma: float
    sigma_mode: str
    policy_lr: float
    policy_weight_decay: float
    policy_steps: int
    hidden: int
    reward_terms: str
    floor: float
    weight_scale: str = "free"


@dataclass(frozen=True)
class RoundStart:
    """Where round t starts: the broadcast member of the latest round that had one."""

    round: int
    losses: tuple[float, ...]  # its mean losses (the policy input); l^1 for round 1
    weights: tuple[float, ...]  # the weights it was trained with (all 1 after round 0)
    pq: float  # its PQ: v_best of the previous round


@dataclass(frozen=True)
class RoundPlan:
    """The m candidates of a round, and what the strategy wants to remember about them.

    ``public`` is shown in the run record (e.g. the policy's mean weights, how many
    draws were invalid); ``private`` is handed back to :meth:`close_round` only (e.g.
    the invalid draws that Eq. 6 scores). Both are JSON.
    """

    candidates: tuple[tuple[float, ...], ...]
    mean_weights: tuple[float, ...] | None = None
    public: JSON = field(default_factory=dict)
    private: JSON = field(default_factory=dict)


@dataclass(frozen=True)
class MemberOutcome:
    """How a member ended: trained (losses and PQ), or diverged / failed (neither)."""

    outcome: Outcome
    pq: float | None = None
    losses: tuple[float, ...] | None = None


@dataclass(frozen=True)
class RoundClose:
    """What closing a round decided: the best member (None if none was trained), each
    member's reward (None where the strategy has no rewards), the strategy's next state,
    the snapshot to store (None without a policy), and a public summary for the record."""

    best_member: int | None
    rewards: tuple[float | None, ...]
    state: JSON
    snapshot: JSON | None = None
    public: JSON = field(default_factory=dict)


class SearchStrategy(Protocol):
    """One search algorithm. ``name`` is what ``POST /v1/runs`` takes as ``strategy``."""

    name: ClassVar[str]
    has_policy: ClassVar[bool]  # snapshots exist: GET /policy and Eq. 7 transfer work
    options: ClassVar[frozenset[str]]  # the run options it reads (others are refused)

    def __init__(self, settings: StrategySettings) -> None: ...

    def initial_state(self) -> JSON:
        """The state before round 1 (e.g. a freshly initialised policy)."""
        ...

    def open_round(self, state: JSON, start: RoundStart) -> tuple[RoundPlan, JSON]:
        """Round ``start.round``'s candidates, and the state after drawing them."""
        ...

    def close_round(
        self, state: JSON, plan: RoundPlan, start: RoundStart, outcomes: Sequence[MemberOutcome]
    ) -> RoundClose:
        """Best member, rewards and the next state, from the members' outcomes."""
        ...


def best_by_pq(outcomes: Sequence[MemberOutcome]) -> int | None:
    """The trained member with the highest PQ; ties go to the lower index."""
    trained = [j for j, o in enumerate(outcomes) if o.outcome == "trained"]
    if not trained:
        return None
    return max(trained, key=lambda j: (outcomes[j].pq, -j))


def check_finite(values: Sequence[float], what: str) -> tuple[float, ...]:
    """``values`` as a tuple of floats, or StrategyError naming ``what``."""
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in out):
        raise StrategyError(f"{what} are not all finite: {list(out)}")
    return out


STRATEGIES: dict[str, type] = {}  # filled by @register as the modules are imported


def register(cls: type) -> type:
    """Class decorator: make a strategy selectable by its ``name``."""
    STRATEGIES[cls.name] = cls
    return cls


def strategy_class(name: str) -> type:
    """The class registered as ``name`` (KeyError for an unknown name)."""
    if name not in STRATEGIES:
        importlib.import_module(STRATEGY_MODULES[name])
    return STRATEGIES[name]


def make_strategy(name: str, settings: StrategySettings) -> SearchStrategy:
    return strategy_class(name)(settings)


def as_mapping(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise StrategyError(f"strategy state must be a JSON object, got {type(value).__name__}")
    return value

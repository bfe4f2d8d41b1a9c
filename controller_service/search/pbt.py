"""Population-based training as a search strategy: the paper's Baseline-P.

The same population, rounds and broadcast as Ada-Segment, with no policy: every
member of round t trains the best member's weights of the round before (all 1
after the pseudo epoch) times exp(N(0, sigma^2)), independently per loss — the
mutation of an evolution strategy, positive by construction and indifferent to
the weights' orders of magnitude (as Ray Tune's PBT perturbs hyper-parameters
by factors). Exploitation is the broadcast: every member starts from the best
checkpoint. The draws of round t depend on (seed, t) only, so the strategy keeps
no state at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from controller_service.search.base import (
    JSON,
    MemberOutcome,
    RoundClose,
    RoundPlan,
    RoundStart,
    StrategySettings,
    best_by_pq,
    register,
)
from controller_service.search.policy import clip_weights, is_valid_weight_vector


def perturb(parent: Sequence[float], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """``w_i × exp(ε_i)``, ε_i ~ N(0, sigma²), independently per loss."""
    return np.asarray(parent, dtype=np.float64) * np.exp(rng.normal(0.0, sigma, size=len(parent)))


@register
class Pbt:
    """Baseline-P (see the module doc); ``sigma`` is the std of the log-normal factor."""

    name: ClassVar[str] = "pbt"
    has_policy: ClassVar[bool] = False
    options: ClassVar[frozenset[str]] = frozenset({"sigma"})

    def __init__(self, settings: StrategySettings) -> None:
        self.settings = settings

    def initial_state(self) -> JSON:
        return {}

    def open_round(self, state: JSON, start: RoundStart) -> tuple[RoundPlan, JSON]:
        rng = np.random.default_rng([self.settings.seed, start.round])
        candidates = []
        for _ in range(self.settings.population):
            weights = perturb(start.weights, rng, self.settings.sigma)
            if not is_valid_weight_vector(weights):  # an overflow far out in the tail
                weights = clip_weights(weights, self.settings.floor)
            candidates.append(tuple(float(w) for w in weights))
        return RoundPlan(
            candidates=tuple(candidates), public={"parent_weights": list(start.weights)}
        ), state

    def close_round(
        self, state: JSON, plan: RoundPlan, start: RoundStart, outcomes: Sequence[MemberOutcome]
    ) -> RoundClose:
        return RoundClose(
            best_member=best_by_pq(outcomes), rewards=(None,) * len(outcomes), state=state
        )

"""Eq. 3-5: the REINFORCE rewards of one round, from the trained members' PQs.

r_local = (v - mean v) / std v                       (Eq. 3)
r_imp   = (v - v_best_prev) / std(v - v_best_prev)   (Eq. 4)
r       = (t/T) (r_local + r_imp)                    (Eq. 5)

Pinned choices (docs/design.md): population std (ddof 0); a std below 1e-12
makes its term 0 instead of dividing by ~0 (one member, or all members equal); a
member that produced no PQ (diverged or failed: ``None``) gets -1 unscaled, like
an invalid candidate, and is left out of the mean and std so it cannot distort
the others' rewards.

``terms`` selects the reward: "local+imp" (Eq. 5, the paper), "local" (Eq. 3
only) or "rank" (ours, beyond the paper): the members' centred ranks scaled to
unit std (ties share their mean rank), so one outlying PQ cannot dominate the
step however far it lies. Every variant keeps Eq. 5's t/T factor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np

from controller_service.search.options import REWARD_TERMS

DIVERGED_REWARD = -1.0
STD_EPSILON = 1e-12


def _divide_by_std(numerator: np.ndarray, values: np.ndarray) -> np.ndarray:
    """numerator / std(values) (population), or zeros when that std is below STD_EPSILON."""
    std = float(np.std(values))
    if std < STD_EPSILON:
        return np.zeros_like(numerator)
    return numerator / std


def rewards(
    pqs: Sequence[float | None],
    best_prev: float,
    round_: int,
    rounds: int,
    terms: str = "local+imp",
) -> list[float]:
    """Rewards of the m trained members of round ``round_`` of ``rounds``, in member order.

    ``pqs[j]`` is member j's PQ, or ``None`` if it diverged; ``best_prev`` is the
    best PQ of the previous round (round 0's PQ for round 1).
    """
    if terms not in REWARD_TERMS:
        raise ValueError(f"terms must be one of {REWARD_TERMS}, got {terms!r}")
    for name, value, minimum in (("rounds", rounds, 1), ("round_", round_, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if round_ > rounds:
        raise ValueError(f"round_ {round_} is past the last round {rounds}")
    if not isinstance(best_prev, Real) or not math.isfinite(best_prev):
        raise ValueError(f"best_prev must be a finite number, got {best_prev!r}")
    if len(pqs) == 0:
        raise ValueError("pqs must hold the PQ of at least one member")
    for j, pq in enumerate(pqs):
        if pq is not None and (not isinstance(pq, Real) or not math.isfinite(pq)):
            raise ValueError(f"pqs[{j}] = {pq!r} must be a finite number or None (diverged)")

    trained = [j for j, pq in enumerate(pqs) if pq is not None]
    out = [DIVERGED_REWARD] * len(pqs)
    if not trained:
        return out
    v = np.array([pqs[j] for j in trained], dtype=np.float64)
    if terms == "rank":
        ranks = _mean_ranks(v)
        total = _divide_by_std(ranks - ranks.mean(), ranks)
    else:
        total = _divide_by_std(v - v.mean(), v)  # Eq. 3
    if terms == "local+imp":
        improvement = v - best_prev
        total = total + _divide_by_std(improvement, improvement)  # Eq. 4
    scaled = (round_ / rounds) * total
    for j, reward in zip(trained, scaled, strict=True):
        out[j] = float(reward)
    return out


def _mean_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..k-1 of ``values`` (ascending), ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks

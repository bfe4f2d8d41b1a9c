"""Ada-Segment's weight controller as a search strategy: Eq. 1-2 to open a round, Eq. 3-6 to
close it (the paper's "Ada-Segment Algorithm"; docs/design.md has the maths as implemented).

The policy network, its Adam state and its random generator are the strategy's
state (``Policy.state_dict``), so a run draws the same candidates and takes the
same steps for the same seed and reports, across restarts.

Invalid draws (a component <= 0 or not finite) score -1 in Eq. 6, as the paper
says. A member that drew only invalid candidates ``max_draws`` times trains a
clipped copy of its last draw (the round needs m models, and it may still be
the best one), but that copy is no sample of the policy, so Eq. 6 leaves it out:
only its invalid draws are scored. Members that diverged or failed score -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from controller_service.search.base import (
    JSON,
    MemberOutcome,
    RoundClose,
    RoundPlan,
    RoundStart,
    StrategyError,
    StrategySettings,
    as_mapping,
    best_by_pq,
    check_finite,
    register,
)
from controller_service.search.policy import (
    Policy,
    PolicyConfig,
    clip_weights,
    is_valid_weight_vector,
    scale_to_loss_sum,
)
from controller_service.search.rewards import rewards

INVALID_REWARD = -1.0  # an invalid (never trained) candidate's reward in Eq. 6


@register
class AdaSegment:
    """The paper's controller: a policy MLP sampled with REINFORCE (see the module doc)."""

    name: ClassVar[str] = "ada-segment"
    has_policy: ClassVar[bool] = True
    options: ClassVar[frozenset[str]] = frozenset(
        {
            "sigma",
            "sigma_mode",
            "policy_lr",
            "policy_weight_decay",
            "policy_steps",
            "hidden",
            "reward_terms",
            "weight_scale",
        }
    )

    def __init__(self, settings: StrategySettings) -> None:
        self.settings = settings
        try:
            self.config = PolicyConfig(
                n_losses=settings.n_losses,
                hidden=settings.hidden,
                sigma=settings.sigma,
                sigma_mode=settings.sigma_mode,
                lr=settings.policy_lr,
                weight_decay=settings.policy_weight_decay,
                steps=settings.policy_steps,
                floor=settings.floor,
            )
        except ValueError as exc:
            raise StrategyError(str(exc)) from None

    def _policy(self, state: JSON) -> Policy:
        try:
            return Policy.from_state_dict(self.config, dict(as_mapping(state)["policy"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StrategyError(f"the run's policy state cannot be read: {exc}") from None

    def initial_state(self) -> JSON:
        return {"policy": Policy(self.config, self.settings.seed).state_dict()}

    def open_round(self, state: JSON, start: RoundStart) -> tuple[RoundPlan, JSON]:
        """Eq. 1 on the broadcast member's losses, then Eq. 2 for the m members."""
        policy = self._policy(state)
        try:
            mean = policy.mean_weights(list(start.losses))
            mean = list(check_finite(mean, f"the policy's mean weights of round {start.round}"))
            draw = policy.sample(mean, self.settings.population)
        except ValueError as exc:
            raise StrategyError(str(exc)) from None
        invalid_by_member = np.bincount(
            np.asarray(draw.invalid_members, dtype=np.int64), minlength=self.settings.population
        )
        # Eq. 6 scores the invalid draws; a non-finite one has no density to score
        scorable = [row for row in draw.invalid if np.all(np.isfinite(row))]
        private: dict[str, Any] = {"input_losses": list(start.losses), "invalid": scorable}
        candidates, shown_mean = draw.candidates, mean
        if self.settings.weight_scale == "loss-sum":
            # members train the scaled vectors; Eq. 6 scores the draws themselves (the
            # reward is a function of the draw through the scaling)
            private["drawn"] = [list(c) for c in draw.candidates]
            try:
                candidates = [
                    # into [floor, MAX_WEIGHT] as every weight a trainer gets
                    list(clip_weights(scale_to_loss_sum(c, start.losses), self.settings.floor))
                    for c in candidates
                ]
                if is_valid_weight_vector(mean):
                    shown_mean = list(scale_to_loss_sum(mean, start.losses))
            except ValueError as exc:
                raise StrategyError(str(exc)) from None
        plan = RoundPlan(
            candidates=tuple(tuple(c) for c in candidates),
            mean_weights=tuple(shown_mean),
            public={
                "invalid_draws": len(draw.invalid),
                "invalid_by_member": [int(k) for k in invalid_by_member],
                "clipped_members": list(draw.clipped_members),
            },
            private=private,
        )
        return plan, {"policy": policy.state_dict()}

    def close_round(
        self, state: JSON, plan: RoundPlan, start: RoundStart, outcomes: Sequence[MemberOutcome]
    ) -> RoundClose:
        """Eq. 3-5 rewards for the trained members, -1 for the rest, one Eq. 6 step."""
        policy = self._policy(state)
        pqs = [o.pq if o.outcome == "trained" else None for o in outcomes]
        member_rewards = rewards(
            pqs, start.pq, start.round, self.settings.rounds, self.settings.reward_terms
        )
        clipped = set(plan.public.get("clipped_members", []))
        scored = [j for j in range(len(outcomes)) if j not in clipped]
        invalid = [list(row) for row in plan.private.get("invalid", [])]
        draws = plan.private.get("drawn", plan.candidates)  # before any weight_scale
        drawn = [list(draws[j]) for j in scored] + invalid
        scored_rewards = [member_rewards[j] for j in scored] + [INVALID_REWARD] * len(invalid)
        if drawn:
            try:
                policy.update(plan.private["input_losses"], drawn, scored_rewards)
            except ValueError as exc:
                raise StrategyError(f"round {start.round}'s policy update failed: {exc}") from None
        shown = tuple(None if j in clipped else member_rewards[j] for j in range(len(outcomes)))
        return RoundClose(
            best_member=best_by_pq(outcomes),
            rewards=shown,
            state={"policy": policy.state_dict()},
            snapshot=policy.snapshot(),
        )

"""``adaseg train``'s weights: one static strategy (equal, published, published-ratios,
fixed, uncertainty, GradNorm) for the whole job, the baselines Ada-Segment is compared
against."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from trainer_image.weighting.base import WeightingStrategy


@dataclass
class ConstantStrategy:
    """The same strategy object, learnable or not, every epoch (it is ``kept``: its
    parameters train with the model and its state is in the resume point)."""

    kept: WeightingStrategy
    rank0_only: bool = False
    clipped: None = None

    def strategy(
        self, epoch: int, previous_losses: Mapping[str, float] | None
    ) -> WeightingStrategy:
        return self.kept

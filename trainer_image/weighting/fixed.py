"""Fixed weights: total = Σ λ_i l_i with a constant vector, from one of four sources.

- ``equal``: every λ_i = 1, the baseline every weighting method is measured against;
- ``published``: the weights the model's own paper trained with, which each model
  states as its ``published_weights`` class attribute (loss name → weight);
- ``published-ratios``: the same ratios scaled to mean 1. The overall scale of a weight
  vector multiplies the gradient the shared layers get, so under SGD it acts as their
  learning rate; weights tuned with an optimiser whose steps do not grow with the gradient
  (Mask2Former's AdamW) keep their ratios' meaning here, not their scale;
- ``fixed``: any vector (``adaseg train --strategy fixed --weights a,b,c``).

The controller's weights for one interval or epoch are a :class:`FixedWeights`
too: Ada-Segment changes where the vector comes from, not how the step uses it.
Constant weights are what the paper's lr/λ_i head rule assumes, so they are the
ones that offer it (``head_lr_weights``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from trainer_image.weighting.base import WeightingStrategy, check_losses, check_names
from trainer_image.weighting.registry import register_strategy


class FixedWeights(WeightingStrategy):
    """Σ λ_i l_i with the given positive, finite weights."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        if not weights:
            raise ValueError("FixedWeights needs at least one weight")
        for name, value in weights.items():
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"weight {name!r} must be finite and > 0, got {value!r}")
        self._weights = {name: float(value) for name, value in weights.items()}

    @classmethod
    def equal(cls, loss_names: Sequence[str]) -> FixedWeights:
        return cls({name: 1.0 for name in check_names(loss_names)})

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    @property
    def head_lr_weights(self) -> dict[str, float]:
        return dict(self._weights)

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        check_losses(list(self._weights), losses)
        return sum(self._weights[name] * loss for name, loss in losses.items())


@register_strategy("equal")
def equal(model: nn.Module, weights: Mapping[str, float] | None) -> FixedWeights:
    return FixedWeights.equal(list(model.loss_names))


@register_strategy("published")
def published(model: nn.Module, weights: Mapping[str, float] | None) -> FixedWeights:
    table = getattr(model, "published_weights", None)
    if table is None:
        name = getattr(model, "model_name", type(model).__name__)
        raise ValueError(f"model {name!r} has no published weights (no published_weights)")
    names = list(model.loss_names)
    if set(table) != set(names):
        raise ValueError(f"published weights are for {sorted(table)}, not {names}")
    return FixedWeights(table)


@register_strategy("published-ratios")
def published_ratios(model: nn.Module, weights: Mapping[str, float] | None) -> FixedWeights:
    """The published weights divided by their mean (module docstring)."""
    table = published(model, weights).weights
    mean = sum(table.values()) / len(table)
    return FixedWeights({name: value / mean for name, value in table.items()})


@register_strategy("fixed")
def fixed(model: nn.Module, weights: Mapping[str, float] | None) -> FixedWeights:
    """``--weights``: one value per loss of the model."""
    names = list(model.loss_names)
    if weights is None or set(weights) != set(names):
        raise ValueError(f"--weights must give one value for each of {names}")
    return FixedWeights(weights)

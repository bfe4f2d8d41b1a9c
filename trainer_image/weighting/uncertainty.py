"""Kendall et al. 2018: homoscedastic-uncertainty weighting, learnt with the model.

Total = Σ exp(−s_i) l_i + s_i with learnable log-variances s_i (init 0, so the
first step is equal weighting), as AntVisionPS's "learnable weighted loss". The
``+ s_i`` term keeps s_i from growing without bound; the effective weight of
loss i is exp(−s_i). Its heads train at plain lr (``engine/optim.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from trainer_image.weighting.base import WeightingStrategy, check_losses, check_names
from trainer_image.weighting.registry import register_strategy


class UncertaintyWeighting(WeightingStrategy):
    """Learnable log-variances ``log_vars`` (its one parameter), one per loss."""

    def __init__(self, loss_names: Sequence[str]) -> None:
        super().__init__()
        self.loss_names = check_names(loss_names)
        self.log_vars = nn.Parameter(torch.zeros(len(self.loss_names)))

    @property
    def weights(self) -> dict[str, float]:
        values = torch.exp(-self.log_vars.detach()).tolist()
        return dict(zip(self.loss_names, values, strict=True))

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        check_losses(self.loss_names, losses)
        stacked = torch.stack([losses[name].float() for name in self.loss_names])
        return (torch.exp(-self.log_vars) * stacked + self.log_vars).sum()


@register_strategy("uncertainty")
def uncertainty(model: nn.Module, weights: Mapping[str, float] | None) -> UncertaintyWeighting:
    return UncertaintyWeighting(list(model.loss_names))

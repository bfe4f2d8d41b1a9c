"""What a loss-weighting strategy is: ``combine(losses) -> total``, its weights, its parameters.

The LibMTL / nash-mtl shape: every strategy is an ``nn.Module``, so a learnable
one exposes its parameters through ``parameters()`` (the trainer optimises them
in their own group) and its state through ``state_dict()`` (checkpoints carry
it); a fixed one simply has neither. The training loop asks a strategy only
what this base class declares, never which class it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


class WeightingStrategy(nn.Module):
    """Base of every strategy; subclasses implement ``weights`` and ``combine``."""

    # False where the strategy's updates use per-process statistics (GradNorm's gradient
    # norms): under torchrun each rank would learn different weights.
    data_parallel: bool = True

    @property
    def weights(self) -> dict[str, float]:
        """The weight of each loss now, for logs, metrics and checkpoints."""
        raise NotImplementedError

    @property
    def head_lr_weights(self) -> dict[str, float] | None:
        """The weights each head's learning rate is divided by (lr/λ_i, the paper's rule),
        or ``None`` to train every head at lr. Only weights that stay constant over an
        interval qualify (``engine/optim.py`` says why); the default is ``None``."""
        return None

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The total loss to back-propagate, from the model's unweighted named losses."""
        raise NotImplementedError


def check_losses(names: Sequence[str], losses: Mapping[str, torch.Tensor]) -> None:
    """A strategy built for some losses must get exactly those, or weights go astray silently."""
    if set(losses) != set(names):
        raise KeyError(f"expected losses {sorted(names)}, got {sorted(losses)}")


def check_names(loss_names: Sequence[str]) -> list[str]:
    names = list(loss_names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"loss names must be non-empty and unique, got {names}")
    return names

"""SGD over one parameter group per loss head, each head at lr/λ_i, on one cosine schedule.

Total loss = Σ λ_i l_i over the model's named losses (through a weighting
strategy, see ``trainer_image/weighting``). With weights constant over an
interval, the parameters of loss i's head train at lr/λ_i (the paper's
Implementation Details): the head's gradient is λ_i ∇l_i, so its step is
lr ∇l_i whatever λ_i is, and the weights act on the shared backbone only.

Learnable strategies (uncertainty weighting, GradNorm) train every head at plain
lr, on purpose. They are baselines, and their papers train all parameters at one
learning rate: scaling their heads would compare Ada-Segment with a method nobody
published. And their weights move every step, so lr/λ_i(t) would tie each head's
step size to the strategy's own drifting state (a shrinking exp(−s_i) would speed
its head up as it learns to ignore it), while the rule's premise, a weight constant
over the interval, holds for fixed weights only. ``--no-head-lr-scaling`` gives
fixed weights the same plain-lr treatment, for the ablation.

The cosine spans the *whole run*: an interval knows its global iteration range,
so a run split into intervals (rounds, epochs, re-issued leases) follows one
schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from trainer_image.engine.config import TrainConfig

SHARED_GROUP = "shared"
STRATEGY_GROUP = "strategy"


def cosine_factor(iteration: int, total_iterations: int, min_factor: float = 0.0) -> float:
    """The LR multiplier at a global iteration of a cosine schedule over ``total_iterations``."""
    if total_iterations <= 0:
        raise ValueError(f"total_iterations must be > 0, got {total_iterations}")
    progress = min(max(iteration, 0), total_iterations) / total_iterations
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def head_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each loss's own head parameters; a parameter claimed by two losses counts as shared."""
    claimed: dict[int, int] = {}
    heads = {name: list(params) for name, params in model.loss_parameters().items()}
    for params in heads.values():
        for param in {id(p): p for p in params}.values():
            claimed[id(param)] = claimed.get(id(param), 0) + 1
    return {
        name: [p for p in {id(p): p for p in params}.values() if claimed[id(p)] == 1]
        for name, params in heads.items()
    }


def build_param_groups(
    model: nn.Module, extra_parameters: Sequence[nn.Parameter] = ()
) -> list[dict[str, Any]]:
    """One group for the shared parameters, one per loss head, one for strategy parameters.

    Every group carries ``lr_scale`` (1/λ for a head, 1 otherwise), set by
    :func:`apply_weights`; the group order is fixed so optimizer state loads back.
    """
    heads = head_parameters(model)
    in_heads = {id(p) for params in heads.values() for p in params}
    trainable = [p for p in model.parameters() if p.requires_grad]
    shared = [p for p in trainable if id(p) not in in_heads]
    groups = [{"params": shared, "name": SHARED_GROUP, "loss": None, "lr_scale": 1.0}]
    for name, params in heads.items():
        trainable_head = [p for p in params if p.requires_grad]
        groups.append({"params": trainable_head, "name": f"head:{name}", "loss": name})
        groups[-1]["lr_scale"] = 1.0
    if extra_parameters:
        groups.append(
            {
                "params": list(extra_parameters),
                "name": STRATEGY_GROUP,
                "loss": None,
                "lr_scale": 1.0,
                "weight_decay": 0.0,
            }
        )
    return [group for group in groups if group["params"]]


def make_optimizer(
    model: nn.Module, config: TrainConfig, extra_parameters: Sequence[nn.Parameter] = ()
) -> torch.optim.SGD:
    groups = build_param_groups(model, extra_parameters)
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def apply_weights(
    optimizer: torch.optim.Optimizer, weights: Mapping[str, float] | None, config: TrainConfig
) -> None:
    """Set each head group's lr scale to 1/λ of its loss (1 without weights or head scaling)."""
    for group in optimizer.param_groups:
        loss = group.get("loss")
        scale = 1.0
        if loss is not None and weights is not None and config.head_lr_scaling:
            if loss not in weights:
                raise KeyError(f"no weight for loss {loss!r}; weights have {sorted(weights)}")
            scale = 1.0 / float(weights[loss])
        group["lr_scale"] = scale


def set_learning_rates(
    optimizer: torch.optim.Optimizer, iteration: int, total_iterations: int, config: TrainConfig
) -> float:
    """Put every group at lr × lr_scale × cosine(iteration); returns the cosine factor."""
    factor = cosine_factor(iteration, total_iterations, config.min_lr_factor)
    for group in optimizer.param_groups:
        group["lr"] = config.lr * group.get("lr_scale", 1.0) * factor
    return factor


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    """Clip each group so its effective step direction (grad × lr_scale) has norm <= max_norm.

    Clipping all parameters together would let a head with λ = 200 shrink the
    backbone's step; per group, each part is limited by what it actually moves.
    Returns the largest effective norm seen (for logs).
    """
    largest = 0.0
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        scale = float(group.get("lr_scale", 1.0))
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm / scale)
        largest = max(largest, float(norm) * scale)
    return largest

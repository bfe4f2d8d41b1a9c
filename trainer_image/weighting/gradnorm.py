"""Chen et al. 2018, GradNorm: weights that balance the losses' gradient norms on a shared layer.

At each ``combine`` the norms G_i = w_i ||∇_W l_i|| on the shared layer W are
pulled towards mean(G) · r_i^α, where r_i is loss i's training rate
(l_i / l_i(0)) relative to the mean rate. Since G_i is linear in w_i, the
gradient of Σ|G_i − target_i| with respect to w_i is sign(G_i − target_i) ·
||∇_W l_i||, so no second-order graph is needed. After each update the w_i are
renormalised to sum to n, as in the paper. The returned total uses the weights
before the update, detached, so the model's gradient is Σ w_i ∇l_i.

The weights are buffers updated by GradNorm's own rule, not parameters of the
trainer's optimizer; its heads train at plain lr (``engine/optim.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from trainer_image.weighting.base import WeightingStrategy, check_losses, check_names
from trainer_image.weighting.registry import register_strategy


class GradNorm(WeightingStrategy):
    """GradNorm over ``shared_parameters`` (the last shared layer's weights)."""

    # gradient norms are per process: under torchrun every rank would learn its own weights
    data_parallel = False

    def __init__(
        self,
        loss_names: Sequence[str],
        shared_parameters: Sequence[torch.Tensor],
        alpha: float = 1.5,
        lr: float = 0.025,
    ) -> None:
        super().__init__()
        self.loss_names = check_names(loss_names)
        self.shared_parameters = [p for p in shared_parameters if p.requires_grad]
        if not self.shared_parameters:
            raise ValueError("GradNorm needs the trainable parameters of the last shared layer")
        self.alpha = float(alpha)
        self.lr = float(lr)
        n = len(self.loss_names)
        self.register_buffer("task_weights", torch.ones(n))
        self.register_buffer("initial_losses", torch.zeros(n))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @property
    def weights(self) -> dict[str, float]:
        return dict(zip(self.loss_names, self.task_weights.tolist(), strict=True))

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        check_losses(self.loss_names, losses)
        ordered = [losses[name] for name in self.loss_names]
        current = torch.stack([loss.detach().float() for loss in ordered])
        if not bool(self.initialised):
            self.initial_losses.copy_(current.clamp_min(1e-12))
            self.initialised.fill_(True)
        weights = self.task_weights.clone()
        total = sum(w * loss for w, loss in zip(weights.tolist(), ordered, strict=True))
        if torch.is_grad_enabled() and all(loss.requires_grad for loss in ordered):
            self._update(ordered, current)
        return total

    def _update(self, ordered: list[torch.Tensor], current: torch.Tensor) -> None:
        norms = []
        for loss in ordered:
            grads = torch.autograd.grad(
                loss, self.shared_parameters, retain_graph=True, allow_unused=True
            )
            flat = [g.float().pow(2).sum() for g in grads if g is not None]
            zero = torch.zeros((), device=self.task_weights.device)
            norms.append(torch.sqrt(torch.stack(flat).sum()) if flat else zero)
        grad_norms = torch.stack(norms).to(self.task_weights.device)
        weighted_norms = self.task_weights * grad_norms
        rates = current / self.initial_losses
        relative_rates = rates / rates.mean().clamp_min(1e-12)
        targets = weighted_norms.mean() * relative_rates.pow(self.alpha)
        step = torch.sign(weighted_norms - targets) * grad_norms
        updated = (self.task_weights - self.lr * step).clamp_min(1e-3)
        self.task_weights.copy_(updated * len(self.loss_names) / updated.sum())


def last_shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the last shared layer with a weight matrix (GradNorm's W)."""
    heads = {id(p) for params in model.loss_parameters().values() for p in params}
    shared = [
        module
        for module in model.modules()
        if isinstance(module, nn.Conv2d | nn.Linear) and id(module.weight) not in heads
    ]
    if not shared:
        raise ValueError("the model has no shared conv or linear layer for GradNorm")
    return [shared[-1].weight]


@register_strategy("gradnorm")
def gradnorm(model: nn.Module, weights: Mapping[str, float] | None) -> GradNorm:
    return GradNorm(list(model.loss_names), last_shared_parameters(model))

"""Static loss-weighting strategies: the baselines Ada-Segment is compared against.

Each strategy is one small class with one method, ``combine(losses) -> total``
(the LibMTL / nash-mtl shape), plus a ``weights`` property that says which
weights it currently applies, for logs and metrics. The controller-driven
weights of Ada-Segment are a :class:`FixedWeights` per interval: only the
source of the vector differs, the training step is the same.

Strategies with learnable state (:class:`UncertaintyWeighting`,
:class:`GradNorm`) are ``nn.Module`` s, so their state travels in checkpoints
through ``state_dict``. Their heads train at plain lr, not the paper's lr/λ_i
(why: ``training.py``'s module docstring).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn


def _check_losses(names: Sequence[str], losses: Mapping[str, torch.Tensor]) -> None:
    """A strategy built for some losses must get exactly those, or weights go astray silently."""
    if set(losses) != set(names):
        raise KeyError(f"expected losses {sorted(names)}, got {sorted(losses)}")


def _check_names(loss_names: Sequence[str]) -> list[str]:
    names = list(loss_names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"loss names must be non-empty and unique, got {names}")
    return names


class FixedWeights:
    """Total = Σ λ_i l_i with a constant vector: equal (all 1), published, any vector,
    or the controller's weights for one interval."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        if not weights:
            raise ValueError("FixedWeights needs at least one weight")
        for name, value in weights.items():
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"weight {name!r} must be finite and > 0, got {value!r}")
        self._weights = {name: float(value) for name, value in weights.items()}

    @classmethod
    def equal(cls, loss_names: Sequence[str]) -> FixedWeights:
        return cls({name: 1.0 for name in _check_names(loss_names)})

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        _check_losses(list(self._weights), losses)
        return sum(self._weights[name] * loss for name, loss in losses.items())


class UncertaintyWeighting(nn.Module):
    """Kendall et al. 2018 homoscedastic uncertainty, as AntVisionPS's "learnable weighted loss".

    Total = Σ exp(−s_i) l_i + s_i with learnable log-variances s_i (init 0, so the
    first step is equal weighting). The ``+ s_i`` term keeps s_i from growing
    without bound; the effective weight of loss i is exp(−s_i).
    """

    def __init__(self, loss_names: Sequence[str]) -> None:
        super().__init__()
        self.loss_names = _check_names(loss_names)
        self.log_vars = nn.Parameter(torch.zeros(len(self.loss_names)))

    @property
    def weights(self) -> dict[str, float]:
        values = torch.exp(-self.log_vars.detach()).tolist()
        return dict(zip(self.loss_names, values, strict=True))

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        _check_losses(self.loss_names, losses)
        stacked = torch.stack([losses[name].float() for name in self.loss_names])
        return (torch.exp(-self.log_vars) * stacked + self.log_vars).sum()


class GradNorm(nn.Module):
    """Chen et al. 2018: learn weights w_i that balance gradient norms on the last shared layer.

    At each ``combine`` the norms G_i = w_i ||∇_W l_i|| on the shared layer W are
    pulled towards mean(G) · r_i^α, where r_i is loss i's training rate
    (l_i / l_i(0)) relative to the mean rate. Since G_i is linear in w_i, the
    gradient of Σ|G_i − target_i| with respect to w_i is sign(G_i − target_i) ·
    ||∇_W l_i||, so no second-order graph is needed. After each update the w_i
    are renormalised to sum to n, as in the paper. The returned total uses the
    weights before the update, detached, so the model's gradient is Σ w_i ∇l_i.
    """

    def __init__(
        self,
        loss_names: Sequence[str],
        shared_parameters: Sequence[torch.Tensor],
        alpha: float = 1.5,
        lr: float = 0.025,
    ) -> None:
        super().__init__()
        self.loss_names = _check_names(loss_names)
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
        _check_losses(self.loss_names, losses)
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

"""Static weighting strategies: values checked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer_image.weighting import FixedWeights, GradNorm, UncertaintyWeighting


def test_fixed_weights_sum_and_validation() -> None:
    strategy = FixedWeights({"a": 2.0, "b": 0.5})
    total = strategy.combine({"a": torch.tensor(3.0), "b": torch.tensor(4.0)})
    assert total.item() == pytest.approx(2 * 3 + 0.5 * 4)
    assert FixedWeights.equal(["a", "b"]).weights == {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError, match="'b'"):
        FixedWeights({"a": 1.0, "b": 0.0})
    with pytest.raises(ValueError, match="'a'"):
        FixedWeights({"a": math.nan})
    with pytest.raises(KeyError, match="expected losses"):
        strategy.combine({"a": torch.tensor(1.0)})


def test_uncertainty_weighting_value_and_gradient() -> None:
    strategy = UncertaintyWeighting(["a", "b"])
    with torch.no_grad():
        strategy.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
    losses = {"a": torch.tensor(3.0), "b": torch.tensor(4.0)}
    total = strategy.combine(losses)
    # exp(-0)*3 + 0 + exp(-ln 2)*4 + ln 2
    assert total.item() == pytest.approx(3.0 + 2.0 + math.log(2.0))
    total.backward()
    # d/ds (e^{-s} l + s) = 1 - e^{-s} l
    assert strategy.log_vars.grad.tolist() == pytest.approx([1 - 3.0, 1 - 2.0])
    assert strategy.weights == pytest.approx({"a": 1.0, "b": 0.5})


def test_uncertainty_weighting_learns_inverse_loss_scale() -> None:
    """The optimum of e^{-s} l + s is s = ln l: the weight becomes 1/l."""
    strategy = UncertaintyWeighting(["small", "large"])
    optimizer = torch.optim.SGD(strategy.parameters(), lr=0.1)
    losses = {"small": torch.tensor(0.5), "large": torch.tensor(8.0)}
    for _ in range(500):
        optimizer.zero_grad()
        strategy.combine(losses).backward()
        optimizer.step()
    assert strategy.weights == pytest.approx({"small": 2.0, "large": 0.125}, rel=1e-3)


def test_gradnorm_raises_the_weight_of_the_lagging_task() -> None:
    """Two heads on one shared layer; loss b has a 10x smaller gradient at W.
    GradNorm must move weight towards b and keep Σw = n."""
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    head_a, head_b = nn.Linear(4, 1), nn.Linear(4, 1)
    strategy = GradNorm(["a", "b"], list(shared.parameters()), alpha=1.5, lr=0.05)
    x = torch.randn(16, 4)
    for _ in range(20):
        features = shared(x)
        losses = {"a": head_a(features).pow(2).mean(), "b": 0.1 * head_b(features).pow(2).mean()}
        weights_before = strategy.weights
        total = strategy.combine(losses)
        expected = weights_before["a"] * losses["a"] + weights_before["b"] * losses["b"]
        assert total.item() == pytest.approx(expected.item())
    weights = strategy.weights
    assert weights["b"] > weights["a"]
    assert sum(weights.values()) == pytest.approx(2.0)


def test_gradnorm_needs_shared_parameters() -> None:
    with pytest.raises(ValueError, match="last shared layer"):
        GradNorm(["a"], [])

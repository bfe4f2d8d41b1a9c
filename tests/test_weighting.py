"""Weighting strategies: values checked by hand, and the registry that names them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer_image.weighting.fixed import FixedWeights
from trainer_image.weighting.gradnorm import GradNorm
from trainer_image.weighting.registry import build_strategy, register_strategy, strategy_names
from trainer_image.weighting.uncertainty import UncertaintyWeighting


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


class TinyModel(nn.Module):
    """What the registry's builders read of a model: loss names, heads, published weights."""

    loss_names = ("a", "b")
    model_name = "tiny"
    published_weights = {"a": 2.0, "b": 0.5}

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 3)
        self.head_a, self.head_b = nn.Linear(3, 1), nn.Linear(3, 1)

    def loss_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"a": list(self.head_a.parameters()), "b": list(self.head_b.parameters())}


def test_the_registry_lists_every_strategy_in_the_order_the_cli_shows() -> None:
    assert strategy_names() == (
        "equal",
        "published",
        "published-ratios",
        "fixed",
        "uncertainty",
        "gradnorm",
    )
    with pytest.raises(ValueError, match="unknown strategy 'nope'.*'equal'"):
        build_strategy("nope", TinyModel())
    with pytest.raises(ValueError, match="registered twice"):
        register_strategy("equal")(lambda model, weights: FixedWeights.equal(model.loss_names))


def test_published_reads_the_models_own_weights() -> None:
    assert build_strategy("published", TinyModel()).weights == {"a": 2.0, "b": 0.5}
    # the same ratio (4:1) at mean 1: 2 / 1.25 and 0.5 / 1.25, and so the heads' lr/λ too
    ratios = build_strategy("published-ratios", TinyModel())
    assert ratios.weights == pytest.approx({"a": 1.6, "b": 0.4})
    assert ratios.head_lr_weights == pytest.approx({"a": 1.6, "b": 0.4})

    class Unpublished(TinyModel):
        published_weights = None

    for name in ("published", "published-ratios"):
        with pytest.raises(ValueError, match="model 'tiny' has no published weights"):
            build_strategy(name, Unpublished())

    class Mismatched(TinyModel):
        published_weights = {"a": 1.0, "c": 1.0}

    with pytest.raises(ValueError, match=r"published weights are for \['a', 'c'\]"):
        build_strategy("published", Mismatched())


def test_panoptic_deeplab_publishes_its_papers_weights() -> None:
    from trainer_image.models import PUBLISHED_WEIGHTS, PanopticDeepLab

    assert PanopticDeepLab.published_weights is PUBLISHED_WEIGHTS


def test_strategies_expose_their_parameters_and_head_rule() -> None:
    """What the trainer asks of a strategy: its learnable parameters (trained in their own
    group), whether heads divide their lr by it, whether it survives data parallelism."""
    model = TinyModel()
    built = {name: build_strategy(name, model, {"a": 3.0, "b": 1.0}) for name in strategy_names()}
    assert {name: len(list(s.parameters())) for name, s in built.items()} == {
        "equal": 0,
        "published": 0,
        "published-ratios": 0,
        "fixed": 0,
        "uncertainty": 1,  # log_vars; GradNorm updates its weights by its own rule
        "gradnorm": 0,
    }
    assert built["fixed"].head_lr_weights == {"a": 3.0, "b": 1.0}
    assert built["equal"].head_lr_weights == {"a": 1.0, "b": 1.0}
    assert built["uncertainty"].head_lr_weights is None
    assert built["gradnorm"].head_lr_weights is None
    assert [name for name, s in built.items() if not s.data_parallel] == ["gradnorm"]
    assert built["gradnorm"].shared_parameters == [model.shared.weight]
    with pytest.raises(ValueError, match="--weights must give one value for each of"):
        build_strategy("fixed", model, {"a": 1.0})

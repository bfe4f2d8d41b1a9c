"""The three published losses on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from trainer_image.models.losses import hard_pixel_cross_entropy, weighted_l1, weighted_mse


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# Five pixels, two classes: cross-entropies ln2, softplus(-2), softplus(2), ignored, softplus(1).
LOGITS = torch.tensor([[0.0, 2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 2.0, 0.0, 0.0]]).view(1, 2, 1, 5)
LABELS = torch.tensor([0, 0, 0, 255, 1]).view(1, 1, 5)
PIXEL_CE = [math.log(2), _softplus(-2), _softplus(2), 0.0, _softplus(1)]


def test_hard_pixel_cross_entropy_averages_the_hardest_fraction() -> None:
    loss = hard_pixel_cross_entropy(LOGITS, LABELS, top_k=0.4)  # the 2 hardest of 5
    assert loss.item() == pytest.approx((_softplus(2) + _softplus(1)) / 2, rel=1e-6)
    # with top_k 1 it is the plain mean, ignored pixels counting as 0
    full = hard_pixel_cross_entropy(LOGITS, LABELS, top_k=1.0)
    assert full.item() == pytest.approx(sum(PIXEL_CE) / 5, rel=1e-6)


def test_hard_pixel_cross_entropy_weights_pixels_before_mining() -> None:
    weights = torch.tensor([1.0, 1.0, 0.5, 1.0, 1.0]).view(1, 1, 5)
    loss = hard_pixel_cross_entropy(LOGITS, LABELS, weights, top_k=0.4)
    assert loss.item() == pytest.approx((_softplus(1) + 0.5 * _softplus(2)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="top_k"):
        hard_pixel_cross_entropy(LOGITS, LABELS, top_k=0.0)


def test_weighted_mse_normalises_by_the_weight_sum() -> None:
    prediction = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3)
    weights = torch.tensor([1.0, 0.0, 2.0]).view(1, 1, 3)
    loss = weighted_mse(prediction, torch.zeros_like(prediction), weights)
    assert loss.item() == pytest.approx((1 * 1 + 2 * 9) / 3)
    assert weighted_mse(prediction, prediction * 0, weights * 0).item() == 0.0


def test_weighted_l1_sums_both_channels() -> None:
    prediction = torch.tensor([[1.0, -2.0], [3.0, 0.0]]).view(1, 2, 1, 2)  # dy, dx
    weights = torch.tensor([1.0, 2.0]).view(1, 1, 2)
    loss = weighted_l1(prediction, torch.zeros_like(prediction), weights)
    assert loss.item() == pytest.approx((1 * (1 + 3) + 2 * (2 + 0)) / 3)
    zero = weighted_l1(prediction.requires_grad_(), prediction.detach(), weights * 0)
    assert zero.item() == 0.0
    zero.backward()  # no NaN gradient from the 0 / 0 case
    assert torch.isfinite(prediction.grad).all()

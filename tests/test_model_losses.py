"""The three published losses on hand-computed values, and across torchrun ranks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing

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


def _uneven_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four (B, 2, 2, 3) offset-like predictions; images 0-1 carry little weight, 2-3 much,
    so the mean of the two halves' weighted means is far from the batch's."""
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn(4, 2, 2, 3, generator=generator)
    target = torch.randn(4, 2, 2, 3, generator=generator)
    weights = torch.zeros(4, 2, 3)
    weights[0, 0, 0] = 1.0
    weights[2:] = torch.rand(2, 2, 3, generator=generator) + 1.0
    return prediction, target, weights


def _losses_and_grads(prediction, target, weights):
    prediction = prediction.clone().requires_grad_()
    losses = [
        weighted_mse(prediction[:, :1], target[:, :1], weights),
        weighted_l1(prediction, target, weights),
    ]
    grads = [torch.autograd.grad(loss, prediction)[0] for loss in losses]
    return [float(loss.detach()) for loss in losses], grads


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One gloo rank: the losses of its half of the batch (spawned by the test below)."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        part = slice(rank * 2, rank * 2 + 2)
        prediction, target, weights = _uneven_batch()
        result = _losses_and_grads(prediction[part], target[part], weights[part])
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_weighted_losses_over_ranks_are_the_global_batch_loss(tmp_path: Path) -> None:
    """Two gloo ranks with half the batch each: the mean of their losses (the reported
    vector) is the whole batch's weighted mean, and the mean of their gradients (DDP's)
    is its gradient, although the halves hold very different weight sums."""
    prediction, target, weights = _uneven_batch()
    expected, expected_grads = _losses_and_grads(prediction, target, weights)
    halves = [
        _losses_and_grads(prediction[p], target[p], weights[p]) for p in (slice(0, 2), slice(2, 4))
    ]
    mean_of_means = [(a + b) / 2 for a, b in zip(halves[0][0], halves[1][0], strict=True)]
    assert mean_of_means[0] != pytest.approx(expected[0], rel=0.1)  # what a rank mean gives
    torch.multiprocessing.spawn(
        _rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for k in range(2):
        assert (ranks[0][0][k] + ranks[1][0][k]) / 2 == pytest.approx(expected[k], rel=1e-6)
        averaged = torch.cat([ranks[0][1][k], ranks[1][1][k]]) / 2
        torch.testing.assert_close(averaged, expected_grads[k], rtol=1e-6, atol=1e-7)

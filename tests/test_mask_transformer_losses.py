"""The mask transformer's maths on hand-made cases: matching, each loss, ReMask, ReClass.

Numbers are chosen so every value is computed by hand: logit ln 3 is probability
3/4, −ln 3 is 1/4, 0 is 1/2.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainer_image.models.mask_losses import (
    class_cross_entropy,
    dice_loss,
    mask_bce_loss,
    pairwise_mask_costs,
    reclass_targets,
    remask_logits,
    remask_prior,
)
from trainer_image.models.matching import MatchCosts, hungarian, match, match_cost

LN3 = math.log(3.0)


def test_pairwise_costs_by_hand() -> None:
    logits = torch.tensor([[LN3, -LN3], [0.0, 0.0]])  # probabilities (3/4, 1/4), (1/2, 1/2)
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    bce, dice = pairwise_mask_costs(logits, targets)
    # query 0 vs target 0: both pixels right with p = 3/4 → −ln(3/4); vs the empty target:
    # −(ln(1/4) + ln(3/4)) / 2
    assert bce[0, 0] == pytest.approx(-math.log(0.75))
    assert bce[0, 1] == pytest.approx(-(math.log(0.25) + math.log(0.75)) / 2)
    assert bce[1, 0] == pytest.approx(math.log(2.0)) and bce[1, 1] == pytest.approx(math.log(2))
    # dice 1 − (2 Σ p y + 1) / (Σ p + Σ y + 1)
    assert dice[0, 0] == pytest.approx(1 - (2 * 0.75 + 1) / (1.0 + 1 + 1))
    assert dice[0, 1] == pytest.approx(1 - 1 / (1.0 + 0 + 1))
    assert dice[1, 0] == pytest.approx(1 - (2 * 0.5 + 1) / (1.0 + 1 + 1))


def test_class_cross_entropy_weights_no_object_by_a_tenth() -> None:
    # K = 2 classes + no object; query 0 is matched to class 0, query 1 unmatched
    logits = torch.tensor([[[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]]])  # p0 = 1/2; uniform
    targets = torch.tensor([[0, 2]])
    loss = class_cross_entropy(logits, targets, no_object_weight=0.1)
    assert loss == pytest.approx((1.0 * math.log(2) + 0.1 * math.log(3)) / 1.1)
    # same as torch's class-weighted cross-entropy
    weight = torch.tensor([1.0, 1.0, 0.1])
    assert loss == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits[0], targets[0], weight=weight))
    )
    # soft targets replace the one-hot; each query keeps its hard target's weight
    soft = torch.tensor([[[0.9, 0.1, 0.0], [0.0, 0.0, 1.0]]])
    soft_loss = class_cross_entropy(logits, targets, 0.1, soft)
    # −(0.9 ln 1/2 + 0.1 ln 1/4) = 1.1 ln 2
    assert soft_loss == pytest.approx((1.1 * math.log(2) + 0.1 * math.log(3)) / 1.1)


def test_mask_and_dice_losses_by_hand() -> None:
    logits = torch.tensor([[LN3, -LN3]])  # p = (3/4, 1/4)
    targets = torch.tensor([[1.0, 0.0]])
    assert mask_bce_loss(logits, targets) == pytest.approx(-math.log(0.75))
    # summed over pairs, divided by the matched count (the batch's, not this call's)
    assert mask_bce_loss(logits, targets, count=2) == pytest.approx(-math.log(0.75) / 2)
    assert dice_loss(logits, targets) == pytest.approx(1 - 2.5 / 3)
    two = torch.tensor([[LN3, -LN3], [0.0, 0.0]])
    two_targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = (1 - 2.5 / 3) + (1 - (2 * 1.0 + 1) / (1.0 + 2 + 1))
    assert dice_loss(two, two_targets) == pytest.approx(expected / 2)
    # no matched pair: 0, and still connected to the graph
    empty = torch.zeros(0, 4, requires_grad=True)
    zero = mask_bce_loss(empty, torch.zeros(0, 4)) + dice_loss(empty, torch.zeros(0, 4))
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_remask_scales_logits_where_the_semantic_branch_agrees() -> None:
    """Three pixels of one mask, all at logit ln 3 (σ = 3/4): in the segment with the
    semantic branch sure of the query's class (s = 1), a false positive the branch rules
    out (s = 0), and a false positive on a same-class neighbour (s = 1)."""
    logits = torch.full((1, 3), LN3, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    prior = torch.tensor([[1.0, 0.0, 1.0]])
    relaxed = remask_logits(logits, prior)
    assert relaxed.tolist()[0] == pytest.approx([2 * LN3, LN3, 2 * LN3])  # σ: 9/10, 3/4, 9/10
    plain = mask_bce_loss(logits, targets)
    loss = mask_bce_loss(relaxed, targets)
    assert float(plain.detach()) == pytest.approx(-(math.log(0.75) + 2 * math.log(0.25)) / 3)
    # the confirmed right pixel costs less, the ruled-out one the same, the neighbour more
    assert float(loss.detach()) == pytest.approx(
        -(math.log(0.9) + math.log(0.25) + math.log(0.1)) / 3
    )
    (grad,) = torch.autograd.grad(loss, logits)
    # d/dx BCE(σ((1 + s) x)) = (1 + s)(σ((1 + s) x) − y), over 3 pixels
    assert grad.tolist()[0] == pytest.approx([2 * (0.9 - 1) / 3, 0.75 / 3, 2 * 0.9 / 3])
    # dice sees the relaxed probabilities (9/10, 3/4, 9/10)
    assert float(dice_loss(relaxed, targets).detach()) == pytest.approx(
        1 - (2 * 0.9 + 1) / (2.55 + 1 + 1)
    )
    # no logit changes sign: the relaxed mask covers the same pixels
    signs = torch.tensor([[-2.0, 0.5, 3.0]])
    assert torch.equal(remask_logits(signs, torch.tensor([[0.3, 1.0, 0.7]])) > 0, signs > 0)
    # a zero prior changes nothing
    assert torch.equal(remask_logits(logits, torch.zeros(1, 3)), logits)


def test_remask_prior_is_the_semantic_probability_of_the_query_class() -> None:
    # class probabilities over K = 2 real classes (3/4, 1/4) after dropping "no object"
    logits = torch.tensor([[LN3, 0.0, 5.0]])
    semantic = torch.tensor([[1.0, 0.2], [0.0, 0.8]])  # (K, P): q_c(p)
    prior = remask_prior(logits, semantic)
    assert prior.tolist()[0] == pytest.approx([0.75, 0.75 * 0.2 + 0.25 * 0.8])
    # the no-object logit does not matter (renormalised away), and nothing is differentiable
    assert remask_prior(torch.tensor([[LN3, 0.0, -5.0]]), semantic).tolist()[0] == pytest.approx(
        prior.tolist()[0]
    )
    grad_logits = logits.clone().requires_grad_()
    grad_semantic = semantic.clone().requires_grad_()
    assert not remask_prior(grad_logits, grad_semantic).requires_grad


def test_reclass_softens_by_what_the_mask_covers() -> None:
    # mask probabilities (3/4, 1/4, 1/2) on pixels of class 0, class 1 and void
    logits = torch.tensor([[LN3, -LN3, 0.0]])
    labels = torch.tensor([0, 1, 255])
    soft = reclass_targets(logits, labels, torch.tensor([0]), num_classes=2, eta=0.1)
    # shares on labelled pixels: class 0 3/4, class 1 1/4 → 0.9·onehot + 0.1·share
    assert soft.tolist()[0] == pytest.approx([0.9 + 0.075, 0.025, 0.0])
    assert float(soft.sum()) == pytest.approx(1.0)
    # a mask wholly on its own class keeps the one-hot target
    own = reclass_targets(logits, torch.tensor([0, 0, 255]), torch.tensor([0]), 2, 0.1)
    assert own.tolist()[0] == pytest.approx([1.0, 0.0, 0.0])
    # no mass on labelled pixels: one-hot
    void = reclass_targets(logits, torch.tensor([255, 255, 255]), torch.tensor([1]), 2, 0.1)
    assert void.tolist()[0] == pytest.approx([0.0, 1.0, 0.0])


def test_hungarian_finds_the_optimum_a_greedy_choice_misses() -> None:
    # greedy: row 0 takes column 0 (1), row 1 is left with 100; optimum 2 + 2
    rows, cols = hungarian(torch.tensor([[1.0, 2.0], [2.0, 100.0], [50.0, 60.0]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    # non-finite costs do not crash scipy
    rows, cols = hungarian(torch.tensor([[float("nan"), 1.0], [0.0, float("inf")]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_match_pairs_queries_with_their_segments() -> None:
    """Three queries over 4 pixels: query 0 predicts segment A (class 1), query 1 nothing,
    query 2 segment B (class 0). Targets are listed B, A: the matching crosses them."""
    a = torch.tensor([1.0, 1.0, 0.0, 0.0])
    b = torch.tensor([0.0, 0.0, 1.0, 1.0])
    mask_logits = torch.stack([6 * (2 * a - 1), torch.full((4,), -6.0), 6 * (2 * b - 1)])
    class_logits = torch.tensor([[0.0, 4.0, 0.0], [0.0, 0.0, 4.0], [4.0, 0.0, 0.0]])
    targets = torch.stack([b, a])
    rows, cols = match(class_logits, mask_logits, torch.tensor([0, 1]), targets, MatchCosts())
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 1, 2: 0}
    # the cost is Mask2Former's 2·(−p) + 5·BCE + 5·dice
    cost = match_cost(class_logits, mask_logits, torch.tensor([0, 1]), targets, MatchCosts())
    bce, dice = pairwise_mask_costs(mask_logits, targets)
    probs = class_logits.softmax(-1)
    assert cost[2, 0] == pytest.approx(float(-2 * probs[2, 0] + 5 * bce[2, 0] + 5 * dice[2, 0]))
    # an image without segments matches nothing
    rows, cols = match(class_logits, mask_logits, torch.zeros(0, dtype=torch.long),
                       torch.zeros(0, 4), MatchCosts())  # fmt: skip
    assert rows.numel() == cols.numel() == 0

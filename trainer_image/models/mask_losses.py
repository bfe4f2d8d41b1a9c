"""The mask transformer's losses, matching costs and ReMaX's two relaxations, unweighted.

Mask2Former's set losses (Cheng et al. 2022), for one prediction set (one decoder layer):

* **class**: cross-entropy of every query's K + 1 logits (K classes + "no object")
  against its matched segment's class, or "no object" for unmatched queries; each
  query counts with weight 1, an unmatched one with ``no_object_weight`` (0.1), and
  the loss is the weighted mean ``Σ w_i CE_i / Σ w_i`` (what ``F.cross_entropy`` with
  a class-weight vector computes);
* **mask**: per-pixel sigmoid binary cross-entropy between each matched query's mask
  logits and its segment's mask, averaged over pixels, summed over matched pairs and
  divided by their number;
* **dice**: ``1 − (2 Σ p·y + 1) / (Σ p + Σ y + 1)`` per matched pair (``p`` the mask
  probability), divided by the number of matched pairs the same way.

The number of matched pairs is averaged over the ranks of a torchrun job (as
Mask2Former all-reduces it), so data parallel training trains like one process.
Both mask losses are 0 — with a gradient path, so DDP sees every parameter used —
in a batch without segments.

The Hungarian matching cost of a (query, segment) pair is Mask2Former's
``cost_class · (−p_class) + cost_mask · BCE + cost_dice · dice`` over the pixels
it is given (Mask2Former samples 12,544 points; the model passes its stride-4 grid).

The relaxations (ReMaX, Sun et al., NeurIPS 2023) are :func:`remask_prior` with
:func:`remask_logits`, and :func:`reclass_targets`; the model's module docstring gives
our reading of the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer_image.models.losses import IGNORE_LABEL, _mean_over_ranks


def pairwise_mask_costs(
    mask_logits: torch.Tensor, target_masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, dice) of every (query, segment) pair: two (N, M) matrices.

    ``mask_logits`` (N, P) and ``target_masks`` (M, P) in {0, 1}, over the same P
    pixels. BCE is the mean over pixels; both are computed with matrix products, so
    the cost is O(N·M·P) multiply-adds and no (N, M, P) tensor is ever made.
    """
    logits = mask_logits.float()
    targets = target_masks.float()
    pixels = max(int(logits.shape[-1]), 1)
    # −log σ(x) on positive pixels, −log(1 − σ(x)) on negative ones
    positive, negative = F.softplus(-logits), F.softplus(logits)
    bce = (positive @ targets.T + negative @ (1.0 - targets).T) / pixels
    prob = logits.sigmoid()
    numerator = 2.0 * prob @ targets.T + 1.0
    denominator = prob.sum(-1, keepdim=True) + targets.sum(-1)[None, :] + 1.0
    return bce, 1.0 - numerator / denominator


def class_cross_entropy(
    class_logits: torch.Tensor,
    targets: torch.Tensor,
    no_object_weight: float = 0.1,
    soft_targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean cross-entropy of the queries' class logits.

    ``class_logits`` (..., K + 1); ``targets`` (...) in [0, K], K = "no object";
    ``soft_targets`` (..., K + 1), when given, replace the one-hot targets in the
    cross-entropy (ReClass) while each query keeps the weight of its hard target.
    """
    no_object = class_logits.shape[-1] - 1
    log_probs = F.log_softmax(class_logits.float(), dim=-1)
    if soft_targets is None:
        ce = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    else:
        ce = -(soft_targets * log_probs).sum(-1)
    weights = torch.where(targets == no_object, no_object_weight, 1.0).to(ce.dtype)
    return (weights * ce).sum() / weights.sum().clamp_min(torch.finfo(ce.dtype).tiny)


def _normaliser(count: int, device: torch.device) -> torch.Tensor:
    """The number of matched pairs, averaged over ranks, at least 1 (Mask2Former's
    ``num_masks``)."""
    value = torch.tensor(float(count), device=device)
    return _mean_over_ranks(value).clamp_min(1.0)


def mask_bce_loss(
    mask_logits: torch.Tensor, target_masks: torch.Tensor, count: int | None = None
) -> torch.Tensor:
    """Sigmoid BCE of matched masks: mean over pixels, summed over pairs / matched count.

    ``mask_logits`` and ``target_masks`` (T, P); ``count`` the batch's matched pairs
    (default T).
    """
    logits = mask_logits.float()
    count = int(logits.shape[0]) if count is None else count
    if logits.numel() == 0:
        return mask_logits.sum() * 0.0
    per_pixel = F.binary_cross_entropy_with_logits(logits, target_masks.float(), reduction="none")
    return per_pixel.mean(-1).sum() / _normaliser(count, logits.device)


def dice_loss(
    mask_logits: torch.Tensor, target_masks: torch.Tensor, count: int | None = None
) -> torch.Tensor:
    """Dice loss of matched masks, summed over pairs / matched count."""
    logits = mask_logits.float()
    targets = target_masks.float()
    count = int(logits.shape[0]) if count is None else count
    if logits.numel() == 0:
        return mask_logits.sum() * 0.0
    prob = logits.sigmoid()
    numerator = 2.0 * (prob * targets).sum(-1) + 1.0
    denominator = prob.sum(-1) + targets.sum(-1) + 1.0
    return (1.0 - numerator / denominator).sum() / _normaliser(count, logits.device)


def remask_logits(mask_logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """ReMask's relaxed mask logits ``m + m ⊙ s`` (the paper's figure 2), ``prior`` s
    (T, P) in [0, 1] from :func:`remask_prior`, detached.

    Each logit keeps its sign, so a relaxed mask covers the same pixels (σ ≥ 0.5) as the
    plain one; where the semantic branch confirms the query's class (s → 1) the logit is
    up to doubled, elsewhere (s → 0) it is left as it is.
    """
    return mask_logits + mask_logits * prior.to(mask_logits.dtype)


def remask_prior(class_logits: torch.Tensor, semantic_probs: torch.Tensor) -> torch.Tensor:
    """ReMask's per-pixel prior of T queries of one image: the semantic probability of
    each query's class, (T, P) in [0, 1].

    ``class_logits`` (T, K + 1); ``semantic_probs`` (K, P): the auxiliary semantic
    head's softmax over the K classes at the image's P pixels. The query's class
    distribution over the K real classes (renormalised without "no object") weighs
    them: ``s_t(p) = Σ_c p̄_{t,c} · q_c(p)``. Detached: the mask losses train neither
    the semantic head (the paper's stop-gradient) nor the class head.
    """
    with torch.no_grad():
        probs = class_logits.float().softmax(-1)[:, :-1]
        probs = probs / probs.sum(-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)
        return (probs @ semantic_probs.float()).clamp(0.0, 1.0)


def reclass_targets(
    mask_logits: torch.Tensor,
    semantic_labels: torch.Tensor,
    target_classes: torch.Tensor,
    num_classes: int,
    eta: float = 0.1,
) -> torch.Tensor:
    """ReClass's soft class targets of T matched queries of one image: (T, K + 1).

    ``o_{t,c}``: the share of query t's predicted mask (its probabilities σ(x), detached,
    ``mask_logits`` (T, P)) that lies on ground-truth pixels of class c
    (``semantic_labels`` (P,), void = 255 not counted). The target is
    ``(1 − eta) · onehot(class_t) + eta · o_t``: a mask that lies wholly on its own class
    keeps the one-hot target; one that spills onto other classes moves ``eta`` times that
    share of the target to them. A mask with no mass on labelled pixels keeps the one-hot
    target. "No object" always gets 0.
    """
    with torch.no_grad():
        prob = mask_logits.float().sigmoid()
        labelled = semantic_labels != IGNORE_LABEL
        pixel_class = F.one_hot(torch.where(labelled, semantic_labels, num_classes).long(),
                                num_classes + 1).float()  # fmt: skip
        pixel_class[:, num_classes] = 0.0  # void pixels count for no class
        overlap = prob @ pixel_class  # (T, K + 1): one matrix product per image
        onehot = F.one_hot(target_classes.long(), num_classes + 1).float()
        total = overlap.sum(-1, keepdim=True)
        share = torch.where(total > 0, overlap / total.clamp_min(1e-12), onehot)
        return (1.0 - eta) * onehot + eta * share

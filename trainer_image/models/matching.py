"""Bipartite (Hungarian) matching of a mask transformer's queries to ground-truth segments.

Each prediction set is matched on its own, image by image (Mask2Former matches
every decoder layer independently): the cost of giving segment j to query i is
``cost_class · (−p_i(c_j)) + cost_mask · BCE(m_i, y_j) + cost_dice · dice(m_i, y_j)``
and ``scipy.optimize.linear_sum_assignment`` finds the assignment of least total
cost. With more segments than queries the extra segments stay unmatched (and
count as missed); with more queries, the extra queries learn "no object".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from trainer_image.models.mask_losses import pairwise_mask_costs

# A cost stands in for NaN/inf: scipy refuses non-finite matrices, and a diverging step
# is reported by the trainer from the losses, not here.
_LARGE_COST = 1e8


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the three matching terms (Mask2Former's: 2, 5, 5)."""

    cost_class: float = 2.0
    cost_mask: float = 5.0
    cost_dice: float = 5.0


def hungarian(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the least-cost assignment of an (N, M) cost matrix, as int64
    tensors on the cost's device, sorted by row."""
    matrix = cost.detach().float().cpu().numpy()
    if matrix.size == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty.clone()
    matrix = np.nan_to_num(matrix, nan=_LARGE_COST, posinf=_LARGE_COST, neginf=-_LARGE_COST)
    rows, cols = linear_sum_assignment(matrix)
    return (
        torch.as_tensor(rows, dtype=torch.long, device=cost.device),
        torch.as_tensor(cols, dtype=torch.long, device=cost.device),
    )


def match_cost(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    target_classes: torch.Tensor,
    target_masks: torch.Tensor,
    costs: MatchCosts,
) -> torch.Tensor:
    """The (N, M) matching cost of one image: ``class_logits`` (N, K + 1), ``mask_logits``
    (N, P), ``target_classes`` (M,), ``target_masks`` (M, P)."""
    with torch.no_grad():
        probs = class_logits.float().softmax(-1)
        class_cost = -probs[:, target_classes.long()]
        bce, dice = pairwise_mask_costs(mask_logits, target_masks)
        return costs.cost_class * class_cost + costs.cost_mask * bce + costs.cost_dice * dice


def match(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    target_classes: torch.Tensor,
    target_masks: torch.Tensor,
    costs: MatchCosts,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(query indices, segment indices) of one image's matching (shapes as in
    :func:`match_cost`)."""
    if target_classes.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=class_logits.device)
        return empty, empty.clone()
    return hungarian(match_cost(class_logits, mask_logits, target_classes, target_masks, costs))

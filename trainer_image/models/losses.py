"""The three published Panoptic-DeepLab losses, unweighted.

Their scales differ by orders of magnitude (the published weights are 1, 200
and 0.01), which is exactly what makes them a test bed for loss weighting:
nothing here rescales them.

Data parallel (torchrun): the centre and offset losses are weighted means,
Σ w·l / Σ w, and a mean of per-rank means is not the mean of the global
batch (ranks hold different amounts of weight). So their denominator is the
rank-average of Σ w (one all-reduce of a scalar): each rank's loss is then its
share of the global mean, the mean over ranks (what DDP's gradient average
and the reported loss vector take) is exactly the global batch's loss, and a
1-process run with batch B trains like W processes with B/W each. The
semantic loss is a plain mean over equally many pixels per rank when
``top_k`` is 1; with ``top_k`` < 1 the hardest pixels are chosen per rank, as
in detectron2's ``DeepLabCE``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_LABEL = 255


def hard_pixel_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    top_k: float = 0.2,
    ignore_index: int = IGNORE_LABEL,
) -> torch.Tensor:
    """Mean of the hardest ``top_k`` fraction of per-pixel cross-entropies.

    As in DeeperLab / detectron2's ``DeepLabCE``: per-pixel losses (0 on
    ignored pixels) are multiplied by ``weights`` and the top fraction is taken
    over the whole batch, ignored pixels included in the count.
    ``logits`` (B, C, H, W), ``labels`` (B, H, W) int64, ``weights`` (B, H, W).
    """
    if not 0.0 < top_k <= 1.0:
        raise ValueError(f"top_k must lie in (0, 1], got {top_k}")
    pixel_losses = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    if weights is not None:
        pixel_losses = pixel_losses * weights
    pixel_losses = pixel_losses.reshape(-1)
    if top_k == 1.0:
        return pixel_losses.mean()
    count = max(1, int(top_k * pixel_losses.numel()))
    return torch.topk(pixel_losses, count, sorted=False).values.mean()


def _mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """``value`` averaged over the ranks of the process group (itself on one process).

    Detached: it only normalises, and the weights it sums are targets, not outputs. A
    collective, so every rank must compute the loss, as every rank of a DDP step does.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    world = torch.distributed.get_world_size()
    if world == 1:
        return value
    total = value.detach().clone()
    torch.distributed.all_reduce(total)
    return total / world


def _weighted_mean(pixel_losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·l / Σ w with Σ w the ranks' mean (module docstring), and 0 when every weight is
    0 (no host sync for the check)."""
    total = (pixel_losses * weights).sum()
    return total / _mean_over_ranks(weights.sum()).clamp_min(torch.finfo(weights.dtype).tiny)


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Centre-heatmap loss: squared error weighted per pixel, normalised by the
    weight sum. ``prediction``/``target`` (B, 1, H, W), ``weights`` (B, H, W)."""
    return _weighted_mean((prediction - target) ** 2, weights.unsqueeze(1))


def weighted_l1(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Offset loss: |dy| + |dx| weighted per pixel, normalised by the weight sum
    (summed over both channels, as published). ``prediction``/``target``
    (B, 2, H, W), ``weights`` (B, H, W)."""
    return _weighted_mean((prediction - target).abs(), weights.unsqueeze(1))

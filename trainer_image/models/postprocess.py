"""Panoptic-DeepLab outputs → COCO panoptic maps, batched and on the device.

It runs on the whole proxy-validation split every round, so everything is a
handful of tensor operations over the batch: no loop over pixels, instances
or classes (only the grouping loops over the batch's images, so that each
image's distance matrix holds its own thing pixels and centres alone), and
one host transfer at the end for the ``segments`` lists.

The steps are the published ones (detectron2 ``post_processing.py``):
semantic argmax; centre NMS by max-pooling the thresholded heatmap and keeping
the top k; every thing pixel joins the predicted centre nearest to where its
offset points; each instance takes the majority thing class of its pixels;
stuff segments are the remaining pixels of each stuff class; small segments
are dropped (void). Kernel size and areas are given at the reference size of
the published values (640 px) and scaled to the image, like the targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from trainer_image.targets import REFERENCE_SIZE, size_scale


@dataclass
class PanopticPrediction:
    """One image's panoptic output.

    ``ids``: (H, W) int32 on the model's device, 0 = void, other values unique
    segment ids (ready for ``write_panoptic_png``). ``segments``: one dict per
    id with ``id``, ``category_id`` (COCO id), ``isthing`` and ``area``.
    """

    ids: torch.Tensor
    segments: list[dict[str, Any]] = field(default_factory=list)


def scaled_kernel(kernel: int, height: int, width: int, reference_size: int | None) -> int:
    """An odd max-pool kernel, at least 3, scaled with the image size."""
    size = max(3, int(round(kernel * size_scale(height, width, reference_size))))
    return size if size % 2 else size + 1


def find_centers(
    heatmap: torch.Tensor, threshold: float, nms_kernel: int, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance centres by max-pool NMS: (B, K, 2) (y, x) and a (B, K) validity
    mask, K = the largest number of centres any image has (≤ ``top_k``).

    A pixel is a centre when it is above ``threshold`` and equal to the
    maximum of its ``nms_kernel`` neighbourhood; the ``top_k`` highest remain.
    """
    batch, height, width = heatmap.shape[0], heatmap.shape[-2], heatmap.shape[-1]
    scores = heatmap.reshape(batch, 1, height, width)
    scores = torch.where(scores > threshold, scores, torch.full_like(scores, -1.0))
    pooled = F.max_pool2d(scores, nms_kernel, stride=1, padding=nms_kernel // 2)
    scores = torch.where(scores == pooled, scores, torch.full_like(scores, -1.0)).flatten(1)
    k = min(top_k, height * width)
    top_scores, top_index = torch.topk(scores, k, dim=1)  # sorted: valid ones first
    valid = top_scores > threshold
    count = int(valid.sum(1).max().item()) if k else 0
    top_index, valid = top_index[:, :count], valid[:, :count]
    centers = torch.stack((top_index // width, top_index % width), dim=-1)
    return centers.float(), valid


def group_pixels(
    centers: torch.Tensor, valid: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """(B, H, W) instance numbers: 1 + the index of the valid centre nearest to
    where each ``mask`` pixel's offset points (the published grouping); 0 off
    the mask and in images without centres.

    Only masked (thing) pixels and each image's own valid centres enter the
    distance matrix, so the loop runs over the images of the batch, and each
    step is one matrix product: argmin |p − c|² = argmax (p·c − |c|²/2).
    """
    batch, _, height, width = offsets.shape
    instance = torch.zeros(batch, height * width, dtype=torch.long, device=offsets.device)
    counts = valid.sum(dim=1).tolist()  # valid centres come first (sorted by score)
    flat_offsets = offsets.flatten(2)
    for b, count in enumerate(counts):
        if count == 0:
            continue
        pixels = mask[b].flatten().nonzero().squeeze(1)
        pointed = torch.stack(
            (
                (pixels // width).to(offsets.dtype) + flat_offsets[b, 0, pixels],
                (pixels % width).to(offsets.dtype) + flat_offsets[b, 1, pixels],
            ),
            dim=1,
        )
        own = centers[b, :count]
        scores = torch.addmm(-0.5 * (own * own).sum(dim=1), pointed, own.T)
        instance[b, pixels] = scores.max(dim=1).indices + 1
    return instance.view(batch, height, width)


def panoptic_postprocess(
    semantic_logits: torch.Tensor,
    center_heatmap: torch.Tensor,
    offsets: torch.Tensor,
    thing_classes: torch.Tensor,
    category_ids: torch.Tensor,
    *,
    threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int = 200,
    stuff_area: int = 4096,
    thing_area: int = 64,
    reference_size: int | None = REFERENCE_SIZE,
) -> list[PanopticPrediction]:
    """Batched panoptic inference from the three head outputs.

    ``semantic_logits`` (B, C, H, W); ``center_heatmap`` (B, 1, H, W);
    ``offsets`` (B, 2, H, W) in pixels (dy, dx); ``thing_classes`` (C,) bool
    and ``category_ids`` (C,) COCO ids, both indexed by contiguous class.
    ``nms_kernel``, ``stuff_area`` and ``thing_area`` are at ``reference_size``
    and scaled to the image (``reference_size=None``: use them as pixels).
    """
    batch, num_classes, height, width = semantic_logits.shape
    device = semantic_logits.device
    if thing_classes.shape != (num_classes,) or category_ids.shape != (num_classes,):
        raise ValueError(
            f"thing_classes and category_ids must have shape ({num_classes},), got "
            f"{tuple(thing_classes.shape)} and {tuple(category_ids.shape)}"
        )
    scale2 = size_scale(height, width, reference_size) ** 2
    kernel = scaled_kernel(nms_kernel, height, width, reference_size)
    thing_classes = thing_classes.to(device=device, dtype=torch.bool)
    category_ids = category_ids.to(device=device, dtype=torch.long)

    # max().indices, not argmax(): the same result, several times faster on CPU
    semantic = semantic_logits.max(dim=1).indices  # (B, H, W)
    on_thing = thing_classes[semantic]
    # float32 whatever the heads ran in: bfloat16 cannot tell pixel 300 from 301
    centers, valid = find_centers(center_heatmap.float(), threshold, kernel, top_k)
    k = centers.shape[1]
    # Instance 1..K on thing pixels; 0 on stuff and on things of an image with no centre.
    instance = group_pixels(centers, valid, offsets.float(), on_thing)

    # Majority thing class and area of every (image, instance).
    image = torch.arange(batch, device=device).view(batch, 1, 1)
    votes = torch.bincount(
        ((image * (k + 1) + instance) * num_classes + semantic)[instance > 0],
        minlength=batch * (k + 1) * num_classes,
    ).view(batch, k + 1, num_classes)
    instance_class = votes.max(dim=2).indices  # (B, K+1)
    instance_area = votes.sum(dim=2)
    on_stuff = ~on_thing
    stuff_area_per_class = torch.bincount(
        (image * num_classes + semantic)[on_stuff], minlength=batch * num_classes
    ).view(batch, num_classes)

    # One label space per image: 0 void | 1..K instances | K+1+c stuff class c.
    keep = torch.cat(
        (
            torch.zeros(batch, 1, dtype=torch.bool, device=device),
            (instance_area[:, 1:] > 0) & (instance_area[:, 1:] >= thing_area * scale2),
            (stuff_area_per_class > 0)
            & (stuff_area_per_class >= stuff_area * scale2)
            & ~thing_classes,
        ),
        dim=1,
    )
    label_class = torch.cat(
        (instance_class, torch.arange(num_classes, device=device).expand(batch, -1)), dim=1
    )
    label_area = torch.cat((instance_area, stuff_area_per_class), dim=1)
    new_id = torch.cumsum(keep, dim=1) * keep  # 1..N per image, 0 for dropped
    label = torch.where(instance > 0, instance, k + 1 + semantic)
    label = torch.where(on_thing & (instance == 0), torch.zeros_like(label), label)
    ids = new_id.gather(1, label.flatten(1)).view(batch, height, width).to(torch.int32)

    # One host transfer for the segment lists.
    rows, cols = keep.nonzero(as_tuple=True)
    classes = label_class[rows, cols]
    table = torch.stack(
        (
            rows,
            new_id[rows, cols],
            category_ids[classes],
            thing_classes[classes].long(),
            label_area[rows, cols],
        ),
        dim=1,
    ).tolist()
    predictions = [PanopticPrediction(ids=ids[b]) for b in range(batch)]
    for b, seg_id, category_id, isthing, area in table:
        predictions[b].segments.append(
            {"id": seg_id, "category_id": category_id, "isthing": bool(isthing), "area": area}
        )
    return predictions

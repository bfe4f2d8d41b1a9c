"""Mask-transformer outputs → COCO panoptic maps: Mask2Former's mask-wise merging.

For each image (the rules of Mask2Former's ``panoptic_inference``):

1. a query is kept when its most likely class is not "no object" and that class's
   probability (its *score*) exceeds ``object_mask_threshold``;
2. every pixel goes to the kept query with the highest ``score · σ(mask)``;
3. a kept query becomes a segment from the pixels it owns *and* where its own mask
   probability is at least 0.5 — unless it owns less than ``overlap_threshold`` of
   its own mask (``σ ≥ 0.5``), in which case it is dropped (mostly covered by
   better queries);
4. queries of a thing class are one segment each; queries of a stuff class are
   merged into one segment per class.

Pixels no segment takes are void (id 0). The output is the
:class:`~trainer_image.models.postprocess.PanopticPrediction` every model returns,
so PQ is computed by the same evaluator.
"""

from __future__ import annotations

import torch

from trainer_image.models.postprocess import PanopticPrediction


def mask_panoptic_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    thing_classes: torch.Tensor,
    category_ids: torch.Tensor,
    *,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> list[PanopticPrediction]:
    """Panoptic maps of a batch: ``class_logits`` (B, N, K + 1), ``mask_logits``
    (B, N, H, W) at the output size, ``thing_classes`` (K,) bool and
    ``category_ids`` (K,) COCO ids by contiguous class."""
    batch, _, num_outputs = class_logits.shape
    num_classes = num_outputs - 1
    if thing_classes.shape != (num_classes,) or category_ids.shape != (num_classes,):
        raise ValueError(
            f"thing_classes and category_ids must have shape ({num_classes},), got "
            f"{tuple(thing_classes.shape)} and {tuple(category_ids.shape)}"
        )
    return [
        _merge_one(
            class_logits[b],
            mask_logits[b],
            thing_classes.to(class_logits.device, torch.bool),
            category_ids.to(class_logits.device, torch.long),
            object_mask_threshold,
            overlap_threshold,
        )
        for b in range(batch)
    ]


def _merge_one(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    thing_classes: torch.Tensor,
    category_ids: torch.Tensor,
    object_mask_threshold: float,
    overlap_threshold: float,
) -> PanopticPrediction:
    height, width = mask_logits.shape[-2:]
    device = mask_logits.device
    no_object = class_logits.shape[-1] - 1
    scores, labels = class_logits.float().softmax(-1).max(-1)
    keep = (labels != no_object) & (scores > object_mask_threshold)
    if not bool(keep.any()):
        return PanopticPrediction(torch.zeros(height, width, dtype=torch.int32, device=device))
    scores, labels = scores[keep], labels[keep]
    probs = mask_logits[keep].float().sigmoid()  # (k, H, W)
    kept = probs.shape[0]
    owner = (scores[:, None, None] * probs).max(0).indices  # (H, W)
    own = owner[None] == torch.arange(kept, device=device)[:, None, None]
    foreground = probs >= 0.5
    owned_area = own.sum((1, 2))
    original_area = foreground.sum((1, 2))
    final = own & foreground
    final_area = final.sum((1, 2))
    valid = (
        (owned_area > 0)
        & (original_area > 0)
        & (final_area > 0)
        & (owned_area >= overlap_threshold * original_area)
    )
    # One host transfer: which queries survive, their classes (k is at most N).
    valid_list, label_list = valid.tolist(), labels.tolist()
    thing_list = thing_classes.tolist()
    segment_of_query = [0] * kept
    stuff_segment: dict[int, int] = {}
    segment_class: list[int] = []
    for query in range(kept):
        if not valid_list[query]:
            continue
        label = label_list[query]
        if not thing_list[label] and label in stuff_segment:
            segment_of_query[query] = stuff_segment[label]
            continue
        segment_class.append(label)
        segment_of_query[query] = len(segment_class)
        if not thing_list[label]:
            stuff_segment[label] = len(segment_class)
    lookup = torch.tensor(segment_of_query, dtype=torch.int32, device=device)
    on = foreground.gather(0, owner[None])[0]  # the owner's own mask covers the pixel
    ids = torch.where(on, lookup[owner], torch.zeros((), dtype=torch.int32, device=device))
    if not segment_class:
        return PanopticPrediction(ids)
    areas = torch.bincount(ids.flatten().long(), minlength=len(segment_class) + 1)[1:].tolist()
    cats = category_ids[torch.tensor(segment_class, device=device)].tolist()
    segments = [
        {"id": k + 1, "category_id": cat, "isthing": bool(thing_list[c]), "area": area}
        for k, (c, cat, area) in enumerate(zip(segment_class, cats, areas, strict=True))
    ]
    return PanopticPrediction(ids, segments)

"""AntVisionPS's two-level fusion of two panoptic models (pure logic: tensors in, maps out).

AntVisionPS (Hong et al., COCO + Mapillary workshop at ICCV 2019) trains two
network ends separately and fuses their outputs at inference, in two levels:

* **task-dependent level** — each sub-task gets the better of the two ends:
  for *things*, per class, the instances of whichever model had the better PQ
  of that class on a held-out split measured beforehand (:func:`choose_sources`);
  for *stuff*, the average of the two models' semantic probabilities;
* **task-independent level** — the fused instances and semantics become one
  panoptic map with the heuristic of Kirillov et al. ("Panoptic Segmentation",
  CVPR 2019; the merge Panoptic FPN uses, :func:`panoptic_fpn_merge`): instances
  pasted in decreasing confidence, each dropped when more than
  ``overlap_threshold`` of it is already taken and otherwise cut to the free
  pixels; then every stuff class of the semantic argmax fills the pixels still
  free, unless that region is smaller than ``stuff_area``.

What each model contributes is a :class:`FusionInput` per image, made by the
adapter of its family (:data:`ADAPTERS`, by registered model name), which also
returns the model's own predictions so one pass serves both. The adapters:

* ``panoptic_deeplab``: semantic probabilities = softmax of its semantic head;
  instances = the thing segments of its own panoptic output, scored by the
  centre-heatmap peak inside the instance times the mean semantic probability of
  its class there (Panoptic-DeepLab's instance score). It costs one extra forward
  pass: ``predict`` is called as is, so its post-processing is never copied here.
* ``mask_transformer``: semantic probabilities = Mask2Former's semantic inference
  ``Σ_q p_q(c) · σ(m_q)``, renormalised per pixel; instances = the queries kept by
  its own score threshold whose class is a thing, mask ``σ ≥ 0.5``, scored
  ``p(class) · mean σ over the mask`` (Mask2Former's instance score).

Sizes (``stuff_area``) are given at ``reference_size`` and scaled to the image,
as in ``postprocess.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainer_image.models.postprocess import PanopticPrediction
from trainer_image.targets import REFERENCE_SIZE, size_scale

FIRST, SECOND = 0, 1


@dataclass
class FusionInput:
    """One image as one model sees it.

    ``semantic`` (K, H, W): per-pixel probabilities over the K contiguous classes;
    ``masks`` (I, H, W) bool, ``classes`` (I,) contiguous thing classes, ``scores``
    (I,) confidences of its I thing instances.
    """

    semantic: torch.Tensor
    masks: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor


@dataclass(frozen=True)
class FusionSettings:
    """The task-independent merge's thresholds (Panoptic FPN's overlap 0.5 and stuff area
    4096 px at COCO scale). Each model's own thresholds have already chosen its instances,
    so no instance score threshold is applied by default."""

    instance_score_threshold: float = 0.0
    overlap_threshold: float = 0.5
    stuff_area: int = 4096
    reference_size: int | None = REFERENCE_SIZE


def choose_sources(
    first: Mapping[int, float], second: Mapping[int, float], thing_ids: Sequence[int]
) -> dict[int, int]:
    """Per thing category id, which model's instances to take: ``FIRST`` (0) or
    ``SECOND`` (1), by their class-wise PQ on the held-out split; a tie goes to the first,
    a class missing from one side to the other."""
    sources = {}
    for cat_id in thing_ids:
        a, b = first.get(cat_id), second.get(cat_id)
        if a is None and b is None:
            sources[cat_id] = FIRST
        elif a is None:
            sources[cat_id] = SECOND
        elif b is None:
            sources[cat_id] = FIRST
        else:
            sources[cat_id] = SECOND if b > a else FIRST
    return sources


def class_pq(result: Mapping[str, Any]) -> dict[int, float]:
    """Per category id, the PQ of a ``PQEvaluator.result()`` (0..1)."""
    return {int(cat): float(scores["pq"]) for cat, scores in result["per_class"].items()}


def fuse(
    first: FusionInput,
    second: FusionInput,
    source_of_class: torch.Tensor,
    thing_classes: torch.Tensor,
    category_ids: torch.Tensor,
    settings: FusionSettings = FusionSettings(),  # noqa: B008 - frozen, never mutated
) -> PanopticPrediction:
    """Both levels for one image. ``source_of_class`` (K,): per contiguous class, FIRST or
    SECOND (read for thing classes only)."""
    if first.semantic.shape != second.semantic.shape:
        raise ValueError(
            f"the two models' semantic maps differ: {tuple(first.semantic.shape)} vs "
            f"{tuple(second.semantic.shape)}"
        )
    device = first.semantic.device
    source = source_of_class.to(device=device, dtype=torch.long)
    picked = [
        _instances_from(view.masks, view.classes, view.scores, source, which)
        for which, view in ((FIRST, first), (SECOND, second))
    ]
    masks = torch.cat([p[0].to(device) for p in picked])
    classes = torch.cat([p[1].to(device) for p in picked])
    scores = torch.cat([p[2].to(device) for p in picked])
    semantic = (first.semantic.float() + second.semantic.to(device).float()) / 2
    return panoptic_fpn_merge(
        masks, classes, scores, semantic, thing_classes, category_ids, settings
    )


def _instances_from(
    masks: torch.Tensor,
    classes: torch.Tensor,
    scores: torch.Tensor,
    source: torch.Tensor,
    which: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    chosen = source.to(classes.device)[classes.long()] == which
    return masks[chosen].bool(), classes[chosen].long(), scores[chosen].float()


def panoptic_fpn_merge(
    masks: torch.Tensor,
    classes: torch.Tensor,
    scores: torch.Tensor,
    semantic: torch.Tensor,
    thing_classes: torch.Tensor,
    category_ids: torch.Tensor,
    settings: FusionSettings = FusionSettings(),  # noqa: B008 - frozen, never mutated
) -> PanopticPrediction:
    """The heuristic merge of instances (``masks`` (I, H, W) bool, ``classes`` (I,),
    ``scores`` (I,)) and ``semantic`` (K, H, W) scores into one panoptic map (module
    docstring). Segment ids are 1, 2, … in the order segments are pasted."""
    num_classes, height, width = semantic.shape
    device = semantic.device
    thing_classes = thing_classes.to(device=device, dtype=torch.bool)
    category_ids = category_ids.to(device=device, dtype=torch.long)
    ids = torch.zeros(height, width, dtype=torch.int32, device=device)
    segments: list[dict[str, Any]] = []
    masks, classes, scores = masks.to(device), classes.to(device), scores.to(device)
    areas = masks.flatten(1).sum(1)
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    score_list, area_list = scores.tolist(), areas.tolist()
    for index in order:
        if score_list[index] < settings.instance_score_threshold:
            break
        area = area_list[index]
        if area == 0:
            continue
        mask = masks[index]
        taken = mask & (ids > 0)
        overlap = int(taken.sum())
        if overlap / area > settings.overlap_threshold:
            continue
        if overlap:
            mask = mask & (ids == 0)
        kept = int(mask.sum())
        if kept == 0:
            continue
        ids[mask] = len(segments) + 1
        label = int(classes[index])
        segments.append(
            {
                "id": len(segments) + 1,
                "category_id": int(category_ids[label]),
                "isthing": True,
                "area": kept,
            }
        )
    stuff_area = settings.stuff_area * size_scale(height, width, settings.reference_size) ** 2
    labels = semantic.argmax(0)
    free = ids == 0
    # stuff classes of the argmax, by class: one bincount, then one paste per kept class
    counts = torch.bincount(labels[free], minlength=num_classes).tolist()
    thing_list = thing_classes.tolist()
    for label in range(num_classes):
        if thing_list[label] or counts[label] == 0 or counts[label] < stuff_area:
            continue
        region = free & (labels == label)
        ids[region] = len(segments) + 1
        segments.append(
            {
                "id": len(segments) + 1,
                "category_id": int(category_ids[label]),
                "isthing": False,
                "area": counts[label],
            }
        )
    return PanopticPrediction(ids, segments)


# -- adapters: a model's output as the fusion's input ---------------------------------------


View = tuple[list[PanopticPrediction], list[FusionInput]]


def _eval_outputs(model: Any, images: torch.Tensor) -> dict[str, torch.Tensor]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model.outputs(images.to(model.device))
    finally:
        model.train(was_training)


def deeplab_view(model: Any, images: torch.Tensor) -> View:
    """Panoptic-DeepLab: its predictions, and each image's semantic softmax and thing
    instances scored by centre peak × mean class probability."""
    predictions = model.predict(images)
    out = _eval_outputs(model, images)
    semantic = out["semantic"].float().softmax(1)
    center = out["center"].float()[:, 0]
    class_of_id = {int(c): k for k, c in enumerate(model.category_ids.tolist())}
    views = []
    for b, prediction in enumerate(predictions):
        things = [s for s in prediction.segments if s["isthing"]]
        ids = prediction.ids.to(semantic.device)
        if things:
            seg_ids = torch.tensor([s["id"] for s in things], device=ids.device)
            masks = ids[None] == seg_ids[:, None, None]
            classes = torch.tensor(
                [class_of_id[int(s["category_id"])] for s in things], device=ids.device
            )
            peak = torch.where(masks, center[b][None], torch.zeros((), device=ids.device))
            peak = peak.flatten(1).max(1).values
            class_prob = semantic[b][classes]  # (I, H, W)
            mean_prob = (class_prob * masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
            scores = peak * mean_prob
        else:
            masks = torch.zeros(0, *ids.shape, dtype=torch.bool, device=ids.device)
            classes = torch.zeros(0, dtype=torch.long, device=ids.device)
            scores = torch.zeros(0, device=ids.device)
        views.append(FusionInput(semantic[b], masks, classes, scores))
    return predictions, views


def mask_transformer_view(model: Any, images: torch.Tensor) -> View:
    """The mask transformer: its predictions (one forward pass for both), and each image's
    semantic inference and kept thing queries."""
    out = model.inference_outputs(images)
    class_logits, mask_logits = out["class_logits"], out["mask_logits"]
    predictions = model.panoptic(out)
    threshold = model.config["object_mask_threshold"]
    thing_classes = model.thing_classes.to(class_logits.device)
    views = []
    for b in range(class_logits.shape[0]):
        probs = class_logits[b].softmax(-1)
        mask_probs = mask_logits[b].sigmoid()
        semantic = torch.einsum("qk,qhw->khw", probs[:, :-1], mask_probs)
        semantic = semantic / semantic.sum(0, keepdim=True).clamp_min(1e-12)
        scores, labels = probs.max(-1)
        no_object = probs.shape[-1] - 1
        keep = (labels != no_object) & (scores > threshold)
        keep &= thing_classes[labels.clamp_max(no_object - 1)]
        masks = mask_probs[keep] >= 0.5
        area = masks.flatten(1).sum(1)
        mask_score = (mask_probs[keep] * masks).flatten(1).sum(1) / area.clamp_min(1)
        nonempty = area > 0
        views.append(
            FusionInput(
                semantic,
                masks[nonempty],
                labels[keep][nonempty],
                (scores[keep] * mask_score)[nonempty],
            )
        )
    return predictions, views


ADAPTERS: dict[str, Callable[[Any, torch.Tensor], View]] = {
    "panoptic_deeplab": deeplab_view,
    "mask_transformer": mask_transformer_view,
}
"""Registered model name → its adapter; a family without one cannot be fused."""

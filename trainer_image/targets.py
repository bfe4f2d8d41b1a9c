"""Panoptic-DeepLab training targets from a panoptic id map.

The definitions follow Panoptic-DeepLab (Cheng et al. 2020) as detectron2's
``projects/Panoptic-DeepLab/target_generator.py`` implements them: a semantic
map, a Gaussian heatmap peaking at each instance's centre of mass, per-pixel
offsets to that centre, and the pixel weights that say where each loss counts.

Two things differ on purpose:

* The published ``sigma`` (8 px) and small-instance area (64² px) were tuned
  for COCO and Cityscapes crops of about 640 px. Our demo and tests train on
  64–128 px synthetic images, where an 8 px Gaussian would cover whole objects.
  Both are therefore given at a *reference size* (640 px on the long side) and
  scaled to each image: ``sigma · s`` and ``area · s²`` with
  ``s = max(H, W) / reference_size``; sigma never drops below ``min_sigma``,
  so the heatmap stays learnable at stride 4. ``reference_size=None`` uses the
  values as pixels, exactly as published.
* Crowd segments get no centre peak (detectron2 draws one): a crowd region is
  not an instance, and its pixels carry no centre or offset weight anyway.

The computation is a binary search of each pixel's id among the image's
segment ids plus a few ``bincount`` s and gathers, so its cost barely grows
with the number of segments (COCO images have dozens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

IGNORE_LABEL = 255
REFERENCE_SIZE = 640


def size_scale(height: int, width: int, reference_size: int | None = REFERENCE_SIZE) -> float:
    """How much smaller (or larger) an image is than the size the published
    hyper-parameters were tuned for; 1.0 when no reference size is given."""
    if reference_size is None:
        return 1.0
    return max(height, width) / float(reference_size)


class PanopticDeepLabTargets:
    """Builds the six target maps from ``(ids, segments, split)``.

    It is the ``target_builder`` the data loader calls per sample (after
    augmentation), so it is pure numpy, picklable and safe in worker processes.
    """

    def __init__(
        self,
        sigma: float = 8.0,
        small_instance_area: int = 64 * 64,
        small_instance_weight: float = 3.0,
        ignore_crowd_in_semantic: bool = False,
        reference_size: int | None = REFERENCE_SIZE,
        min_sigma: float = 2.0,
    ) -> None:
        if not (sigma > 0 and min_sigma >= 0):
            raise ValueError(f"sigma must be > 0 and min_sigma >= 0, got {sigma}, {min_sigma}")
        if small_instance_area < 0 or small_instance_weight <= 0:
            raise ValueError(
                "small_instance_area must be >= 0 and small_instance_weight > 0, got "
                f"{small_instance_area}, {small_instance_weight}"
            )
        if reference_size is not None and reference_size <= 0:
            raise ValueError(f"reference_size must be > 0 or None, got {reference_size}")
        self.sigma = float(sigma)
        self.small_instance_area = int(small_instance_area)
        self.small_instance_weight = float(small_instance_weight)
        self.ignore_crowd_in_semantic = bool(ignore_crowd_in_semantic)
        self.reference_size = reference_size
        self.min_sigma = float(min_sigma)

    def scaled_sigma(self, height: int, width: int) -> float:
        """The Gaussian sigma in pixels for an image of this size."""
        return max(self.min_sigma, self.sigma * size_scale(height, width, self.reference_size))

    def scaled_small_area(self, height: int, width: int) -> float:
        """Instances with fewer pixels than this get ``small_instance_weight``."""
        return self.small_instance_area * size_scale(height, width, self.reference_size) ** 2

    def __call__(
        self, ids: np.ndarray, segments: Sequence[Any], split: Any
    ) -> dict[str, np.ndarray]:
        """Targets for one panoptic map.

        ``ids`` is (H, W) segment ids; ``segments`` the image's segments
        (``id``, ``category_id`` as a COCO id, ``iscrowd``); ``split`` gives
        ``categories`` and ``category_index`` (COCO id → contiguous class).
        Pixels whose id is not among ``segments`` (id 0 included) are void.
        """
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"panoptic ids must be (H, W), got shape {ids.shape}")
        height, width = ids.shape
        # Per segment (a few dozen), then one gather per map: pixel → segment slot.
        # Slot n (past the last segment) is void: id 0 and ids without a segment.
        order = sorted(segments, key=lambda seg: seg.id)
        n = len(order)
        seg_ids = np.array([seg.id for seg in order], dtype=np.int64)
        seg_class = np.full(n + 1, IGNORE_LABEL, dtype=np.int64)
        seg_thing = np.zeros(n + 1, dtype=bool)
        seg_crowd = np.zeros(n + 1, dtype=bool)
        for i, seg in enumerate(order):
            try:
                seg_class[i] = split.category_index[seg.category_id]
            except KeyError:
                raise ValueError(
                    f"segment {seg.id} has category_id {seg.category_id}, "
                    "which is not a category of the split"
                ) from None
            seg_thing[i] = bool(split.categories[seg_class[i]].isthing)
            seg_crowd[i] = bool(seg.iscrowd)
        if n:
            slot = np.minimum(np.searchsorted(seg_ids, ids), n - 1)
            slot = np.where(seg_ids[slot] == ids, slot, n)
        else:
            slot = np.zeros((height, width), dtype=np.int64)
        labelled = np.arange(n + 1) < n

        sem_class = seg_class.copy()
        if self.ignore_crowd_in_semantic:
            sem_class[seg_crowd] = IGNORE_LABEL
        semantic = sem_class[slot]

        # Centre of mass of every segment (only things are used); segments
        # cropped away have area 0 and are skipped.
        flat = slot.ravel()
        area = np.bincount(flat, minlength=n + 1)
        rows = np.bincount(
            flat, weights=np.repeat(np.arange(height, dtype=np.float64), width), minlength=n + 1
        )
        cols = np.bincount(
            flat, weights=np.tile(np.arange(width, dtype=np.float64), height), minlength=n + 1
        )
        cy, cx = rows / np.maximum(area, 1), cols / np.maximum(area, 1)

        thing = labelled & seg_thing & (area > 0)
        instance = thing & ~seg_crowd
        small = thing & (area < self.scaled_small_area(height, width))
        semantic_weights = np.where(small, self.small_instance_weight, 1.0).astype(np.float32)
        center_weights = (labelled & ~seg_crowd).astype(np.float32)[slot]
        offset_weights = instance.astype(np.float32)[slot]

        offset = np.zeros((2, height, width), dtype=np.float32)
        on_instance = offset_weights > 0
        pixel_slot = slot[on_instance]
        y, x = np.nonzero(on_instance)
        offset[0][on_instance] = cy[pixel_slot] - y
        offset[1][on_instance] = cx[pixel_slot] - x

        center = np.zeros((height, width), dtype=np.float32)
        sigma = self.scaled_sigma(height, width)
        for i in np.flatnonzero(instance):
            _paste_gaussian(center, cy[i], cx[i], sigma)

        return {
            "semantic": semantic,
            "semantic_weights": semantic_weights[slot],
            "center": center[None],
            "center_weights": center_weights,
            "offset": offset,
            "offset_weights": offset_weights,
        }


def _paste_gaussian(heatmap: np.ndarray, cy: float, cx: float, sigma: float) -> None:
    """Max-paste an unnormalised Gaussian (peak 1 at the rounded centre),
    truncated at 3·sigma + 1 pixels, as the published generator does."""
    height, width = heatmap.shape
    y0, x0 = int(round(cy)), int(round(cx))
    radius = int(math.ceil(3 * sigma)) + 1
    top, bottom = max(0, y0 - radius), min(height, y0 + radius + 1)
    left, right = max(0, x0 - radius), min(width, x0 + radius + 1)
    gy = np.exp(-((np.arange(top, bottom) - y0) ** 2) / (2 * sigma**2))
    gx = np.exp(-((np.arange(left, right) - x0) ** 2) / (2 * sigma**2))
    window = heatmap[top:bottom, left:right]
    np.maximum(window, np.outer(gy, gx).astype(np.float32), out=window)

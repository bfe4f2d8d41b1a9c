"""Panoptic-DeepLab targets on a hand-made 20×20 panoptic map."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer_image.data.coco_panoptic import Category, PanopticSplit, Segment
from trainer_image.targets import IGNORE_LABEL, PanopticDeepLabTargets, size_scale

# COCO ids are not contiguous on purpose: class index != category id.
CATEGORIES = [
    Category(3, "dog", True, (1, 2, 3)),
    Category(7, "car", True, (4, 5, 6)),
    Category(20, "grass", False, (7, 8, 9)),
]
DOG, CAR, GRASS = 0, 1, 2  # contiguous classes (id order)


def _split() -> PanopticSplit:
    return PanopticSplit(CATEGORIES, [], "/nonexistent/png", "/nonexistent/img")


def _segment(sid: int, category_id: int, iscrowd: bool = False) -> Segment:
    return Segment(sid, category_id, 0, iscrowd, (0, 0, 0, 0))


def _scene() -> tuple[np.ndarray, list[Segment]]:
    """Row 0 void; grass (id 9) elsewhere; a 3×5 dog (id 1) centred at (3, 4);
    a 2×2 dog (id 2, small) centred at (10.5, 10.5); a 3×4 crowd of cars (id 5)."""
    ids = np.full((20, 20), 9, dtype=np.int32)
    ids[0] = 0
    ids[2:5, 2:7] = 1
    ids[10:12, 10:12] = 2
    ids[15:18, 2:6] = 5
    segments = [_segment(1, 3), _segment(2, 3), _segment(5, 7, iscrowd=True), _segment(9, 20)]
    return ids, segments


def _targets(**kwargs) -> dict[str, np.ndarray]:
    options = {"sigma": 2.0, "small_instance_area": 10, "reference_size": None} | kwargs
    ids, segments = _scene()
    return PanopticDeepLabTargets(**options)(ids, segments, _split())


def test_shapes_and_dtypes() -> None:
    t = _targets()
    assert t["semantic"].shape == (20, 20) and t["semantic"].dtype == np.int64
    assert t["center"].shape == (1, 20, 20) and t["offset"].shape == (2, 20, 20)
    for key in ("semantic_weights", "center_weights", "offset_weights"):
        assert t[key].shape == (20, 20) and t[key].dtype == np.float32


def test_semantic_uses_contiguous_classes_and_void() -> None:
    t = _targets()
    assert (t["semantic"][0] == IGNORE_LABEL).all()
    assert (t["semantic"][2:5, 2:7] == DOG).all()
    assert (t["semantic"][15:18, 2:6] == CAR).all()  # crowd keeps its class by default
    assert t["semantic"][8, 8] == GRASS
    ignored = _targets(ignore_crowd_in_semantic=True)
    assert (ignored["semantic"][15:18, 2:6] == IGNORE_LABEL).all()


def test_center_heatmap_peaks_at_instance_centres() -> None:
    heat = _targets()["center"][0]
    assert heat[3, 4] == pytest.approx(1.0)
    # one pixel away from the peak: exp(-1 / (2 sigma^2)) with sigma 2
    assert heat[3, 5] == pytest.approx(math.exp(-1 / 8), rel=1e-6)
    assert heat[4, 5] == pytest.approx(math.exp(-2 / 8), rel=1e-6)
    # (10.5, 10.5) rounds half to even: the peak is at (10, 10)
    assert heat[10, 10] == pytest.approx(1.0)
    # no peak for the crowd (centre (16, 3.5)); only far Gaussian tails reach it
    assert heat[16, 3] < 0.01 and heat[16, 4] < 0.01
    # truncated beyond 3 sigma + 1 = 7 pixels from every centre
    assert heat[19, 19] == 0.0


def test_offsets_point_to_the_centre_of_mass() -> None:
    offset = _targets()["offset"]
    assert offset[:, 2, 2].tolist() == [1.0, 2.0]  # (3, 4) - (2, 2)
    assert offset[:, 4, 6].tolist() == [-1.0, -2.0]
    assert offset[:, 11, 10].tolist() == [-0.5, 0.5]  # (10.5, 10.5) - (11, 10)
    assert (offset[:, 15:18, 2:6] == 0).all()  # crowd: no offsets
    assert (offset[:, 8, 8] == 0).all()  # stuff


def test_weights_for_void_crowd_and_small_instances() -> None:
    t = _targets()
    sem_w, center_w, offset_w = t["semantic_weights"], t["center_weights"], t["offset_weights"]
    assert (sem_w[10:12, 10:12] == 3.0).all()  # small dog: area 4 < 10
    assert (sem_w[2:5, 2:7] == 1.0).all() and (sem_w[15:18, 2:6] == 1.0).all()
    assert (center_w[0] == 0).all() and (center_w[15:18, 2:6] == 0).all()
    assert center_w[8, 8] == 1.0 and center_w[3, 3] == 1.0
    expected_offset_w = np.zeros((20, 20), np.float32)
    expected_offset_w[2:5, 2:7] = 1
    expected_offset_w[10:12, 10:12] = 1
    np.testing.assert_array_equal(offset_w, expected_offset_w)


def test_cropped_away_segments_are_skipped_and_unknown_categories_named() -> None:
    ids, segments = _scene()
    builder = PanopticDeepLabTargets(reference_size=None)
    t = builder(ids, [*segments, _segment(77, 3)], _split())  # id 77 is not in the map
    np.testing.assert_array_equal(t["semantic"], _targets()["semantic"])
    ids[19, 19] = 42  # an id without a segment is void
    t = builder(ids, segments, _split())
    assert t["semantic"][19, 19] == IGNORE_LABEL and t["center_weights"][19, 19] == 0
    with pytest.raises(ValueError, match="category_id 99"):
        builder(ids, [_segment(1, 99)], _split())


def test_sigma_and_small_area_scale_with_the_image() -> None:
    builder = PanopticDeepLabTargets()  # published 8 px / 64² px at 640 px
    assert size_scale(480, 640) == 1.0
    assert builder.scaled_sigma(480, 640) == 8.0
    assert builder.scaled_small_area(480, 640) == 4096
    assert size_scale(64, 64) == pytest.approx(0.1)
    assert builder.scaled_sigma(64, 64) == 2.0  # 0.8 px, raised to min_sigma
    assert builder.scaled_small_area(64, 64) == pytest.approx(40.96)
    assert PanopticDeepLabTargets(min_sigma=0).scaled_sigma(64, 64) == pytest.approx(0.8)

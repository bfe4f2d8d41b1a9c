"""The in-memory PQ evaluator: hand-computed cases and parity with panopticapi's pq_compute.

Parity runs the real ``panopticapi.evaluation.pq_compute`` on files written
from the same maps and segments, and requires every number (All, Things,
Stuff, per class) to agree to 1e-9.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from panopticapi.evaluation import pq_compute, pq_compute_single_core

from trainer_image.data.coco_panoptic import Category, PanopticSplit, Segment
from trainer_image.data.panoptic_png import id2rgb, write_panoptic_png
from trainer_image.eval.perturb import perturb_prediction
from trainer_image.eval.pq import (
    _DENSE_PAIR_CELLS,
    PairRuns,
    PQEvaluator,
    PQInputError,
    _runs_torch,
    format_table,
)

TOLERANCE = 1e-9
THING, STUFF, THING2 = 1, 2, 3
CATEGORIES = [
    {"id": THING, "name": "thing", "isthing": 1},
    {"id": STUFF, "name": "stuff", "isthing": 0},
    {"id": THING2, "name": "other thing", "isthing": 1},
]

# An image is (id map, segments_info); gt segments carry area and iscrowd.
Image = tuple[np.ndarray, list[dict]]


def gt_segments(ids: np.ndarray, cats: dict[int, int], crowd: tuple[int, ...] = ()) -> list[dict]:
    """segments_info for a ground-truth map, areas counted in the map."""
    return [
        {
            "id": seg_id,
            "category_id": cat_id,
            "area": int((ids == seg_id).sum()),
            "iscrowd": int(seg_id in crowd),
        }
        for seg_id, cat_id in cats.items()
    ]


def pred_segments(cats: dict[int, int]) -> list[dict]:
    return [{"id": seg_id, "category_id": cat_id} for seg_id, cat_id in cats.items()]


def write_set(folder: Path, images: list[Image], categories: list[dict]) -> tuple[str, str]:
    """A panoptic JSON + PNG folder as pq_compute reads them; returns (json, folder)."""
    png_dir = folder / "png"
    png_dir.mkdir(parents=True)
    annotations = []
    for image_id, (ids, segments) in enumerate(images, start=1):
        write_panoptic_png(png_dir / f"{image_id}.png", ids)
        annotations.append(
            {"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments}
        )
    json_path = folder / "panoptic.json"
    json_path.write_text(json.dumps({"annotations": annotations, "categories": categories}))
    return str(json_path), str(png_dir)


def run_pq_compute(gt_json: str, gt_dir: str, pred_json: str, pred_dir: str) -> tuple[dict, str]:
    """panopticapi's pq_compute: its dict and what it printed.

    It never closes its process pool, so its idle workers are ended here;
    they would otherwise live as long as the test process.
    """
    printed = io.StringIO()
    before = set(multiprocessing.active_children())
    try:
        with contextlib.redirect_stdout(printed):
            result = pq_compute(gt_json, pred_json, gt_dir, pred_dir)
    finally:
        for worker in set(multiprocessing.active_children()) - before:
            worker.terminate()
            worker.join()
    return result, printed.getvalue()


def reference(
    tmp_path: Path, gt: list[Image], pred: list[Image], categories: list[dict] = CATEGORIES
) -> dict:
    """pq_compute on files written from the images."""
    gt_json, gt_dir = write_set(tmp_path / "gt", gt, categories)
    pred_json, pred_dir = write_set(tmp_path / "pred", pred, categories)
    return run_pq_compute(gt_json, gt_dir, pred_json, pred_dir)[0]


def ours(gt: list[Image], pred: list[Image], categories: list = CATEGORIES) -> dict:
    evaluator = PQEvaluator(categories)
    for (gt_ids, gt_segs), (pred_ids, pred_segs) in zip(gt, pred, strict=True):
        evaluator.add(pred_ids, pred_segs, gt_ids, gt_segs)
    return evaluator.result()


def assert_same(result: dict, expected: dict, groups=("All", "Things", "Stuff")) -> None:
    for group in groups:
        assert result[group]["n"] == expected[group]["n"], group
        for key in ("pq", "sq", "rq"):
            assert result[group][key] == pytest.approx(expected[group][key], abs=TOLERANCE), (
                group,
                key,
            )
    assert result["per_class"].keys() == expected["per_class"].keys()
    for cat_id, scores in expected["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert result["per_class"][cat_id][key] == pytest.approx(scores[key], abs=TOLERANCE)


def assert_parity(tmp_path: Path, gt: list[Image], pred: list[Image]) -> dict:
    result = ours(gt, pred)
    assert_same(result, reference(tmp_path, gt, pred))
    return result


def stats(gt: Image, pred: Image, categories: list = CATEGORIES) -> dict[int, tuple]:
    """(tp, fp, fn, iou sum) per category id after one image."""
    evaluator = PQEvaluator(categories)
    evaluator.add(pred[0], pred[1], gt[0], gt[1])
    return {
        cat_id: (
            int(evaluator.tp[pos]),
            int(evaluator.fp[pos]),
            int(evaluator.fn[pos]),
            float(evaluator.iou[pos]),
        )
        for pos, cat_id in enumerate(evaluator.category_ids)
    }


# ------------------------------------------------------------------- hand-computed cases


def base_gt() -> Image:
    """A 4x6 image: thing 7 (2x3 block, 6 px) on stuff 9 (the other 18 px)."""
    ids = np.full((4, 6), 9, np.int32)
    ids[1:3, 1:4] = 7
    return ids, gt_segments(ids, {7: THING, 9: STUFF})


def test_perfect_prediction_scores_one(tmp_path: Path) -> None:
    gt = base_gt()
    pred_ids = np.where(gt[0] == 7, 500, 600).astype(np.int32)  # other ids, same regions
    result = assert_parity(tmp_path, [gt], [(pred_ids, pred_segments({500: THING, 600: STUFF}))])
    assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}
    assert result["Things"]["n"] == result["Stuff"]["n"] == 1
    assert result["per_class"][THING2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_shifted_segment_iou_by_hand(tmp_path: Path) -> None:
    ids = np.full((4, 6), 9, np.int32)
    ids[1:3, 1:5] = 7  # thing: 8 px; stuff: 16 px
    gt = (ids, gt_segments(ids, {7: THING, 9: STUFF}))
    pred_ids = np.full((4, 6), 9, np.int32)
    pred_ids[1:3, 2:6] = 7  # one column right: 6 px shared, union 10
    pred = (pred_ids, pred_segments({7: THING, 9: STUFF}))
    assert stats(gt, pred)[THING] == (1, 0, 0, pytest.approx(6 / 10))
    # stuff: 24 - 10 px shared, union 16 + 16 - 14
    assert stats(gt, pred)[STUFF] == (1, 0, 0, pytest.approx(14 / 18))
    result = assert_parity(tmp_path, [gt], [pred])
    assert result["All"]["pq"] == pytest.approx((6 / 10 + 14 / 18) / 2)


def test_iou_of_exactly_one_half_is_no_match(tmp_path: Path) -> None:
    ids = np.full((4, 4), 9, np.int32)
    ids[0, :] = 1  # gt thing: 4 px, stuff: 12 px
    pred_ids = np.full((4, 4), 6, np.int32)
    pred_ids[0:2, :] = 5  # pred thing: 8 px containing it: IoU 4/8
    gt = (ids, gt_segments(ids, {1: THING, 9: STUFF}))
    pred = (pred_ids, pred_segments({5: THING, 6: STUFF}))
    assert stats(gt, pred)[THING] == (0, 1, 1, 0.0)
    assert stats(gt, pred)[STUFF] == (1, 0, 0, pytest.approx(8 / 12))
    assert_parity(tmp_path, [gt], [pred])


def test_void_overlap_leaves_the_union(tmp_path: Path) -> None:
    ids = np.zeros((4, 4), np.int32)
    ids[0, :] = 1  # gt thing: 4 px; rows 1-2 are void
    ids[3, :] = 9
    pred_ids = np.full((4, 4), 9, np.int32)
    pred_ids[0:3, :] = 5  # 12 px, 8 of them on void: union 12 + 4 - 4 - 8 = 4, IoU 1
    gt = (ids, gt_segments(ids, {1: THING, 9: STUFF}))
    pred = (pred_ids, pred_segments({5: THING, 9: STUFF}))
    assert stats(gt, pred)[THING] == (1, 0, 0, 1.0)
    assert_parity(tmp_path, [gt], [pred])


def test_unmatched_prediction_mostly_on_void_is_ignored(tmp_path: Path) -> None:
    ids = np.full((4, 4), 9, np.int32)
    ids[:, 3] = 0  # void column, 4 px
    gt = (ids, gt_segments(ids, {9: STUFF}))
    mostly_void = ids.copy()
    mostly_void[0:3, 2:4] = 5  # 6 px, 3 on void: exactly half -> a false positive
    mostly_void[3, 3] = 6  # 1 px, all void -> ignored
    pred = (mostly_void, pred_segments({9: STUFF, 5: THING, 6: THING2}))
    assert stats(gt, pred)[THING] == (0, 1, 0, 0.0)
    assert stats(gt, pred)[THING2] == (0, 0, 0, 0.0)
    assert_parity(tmp_path, [gt], [pred])


def test_crowd_regions_only_the_last_per_category_counts(tmp_path: Path) -> None:
    ids = np.full((4, 8), 9, np.int32)
    ids[0:2, 0:2] = 21  # crowd of THING (first)
    ids[0:2, 4:6] = 22  # crowd of THING (last: the one that counts)
    ids[2:4, 6:8] = 23  # crowd of THING2
    gt = (ids, gt_segments(ids, {9: STUFF, 21: THING, 22: THING, 23: THING2}, (21, 22, 23)))
    pred_ids = ids.copy()
    pred_segs = {9: STUFF, 21: THING, 22: THING, 23: THING}
    pred = (pred_ids, pred_segments(pred_segs))
    # 21 lies on the first THING crowd: not ignored -> FP; 22 on the last: ignored;
    # 23 is THING over THING2's crowd: FP. Crowd is never a false negative.
    assert stats(gt, pred)[THING] == (0, 2, 0, 0.0)
    assert stats(gt, pred)[THING2] == (0, 0, 0, 0.0)
    assert stats(gt, pred)[STUFF] == (1, 0, 0, 1.0)
    assert_parity(tmp_path, [gt], [pred])


def test_cached_ground_truth_keeps_the_json_order_of_crowd_segments(tmp_path: Path) -> None:
    """Two crowd segments of one category listed in non-id order (30, then 20): pq_compute
    takes the last listed (20) as the crowd region. The worker's GroundTruthCache, which
    relabels segments for compact maps, must keep that order: sorted by id it would make 30
    the crowd region, ignore the prediction lying on 30 instead of counting it as a false
    positive, and report PQ 1.0 where pq_compute reports 0.5."""
    from trainer_image.data.coco_panoptic import Record
    from trainer_image.eval.evaluate import GroundTruthCache

    ids = np.full((4, 8), 9, np.int32)
    ids[0:2, 0:2] = 30  # crowd of THING, listed first
    ids[0:2, 4:6] = 20  # crowd of THING, listed last: the one that counts
    segments = gt_segments(ids, {30: THING, 20: THING, 9: STUFF}, crowd=(30, 20))
    assert [s["id"] for s in segments] == [30, 20, 9]
    pred_ids = np.where(ids == 30, 31, np.where(ids == 20, 0, 90)).astype(np.int32)
    pred = (pred_ids, pred_segments({31: THING, 90: STUFF}))  # 20's region left void
    expected = reference(tmp_path, [(ids, segments)], [pred])
    assert expected["All"]["pq"] == pytest.approx(0.5)  # 31 is a false positive

    gt_dir = tmp_path / "gt" / "png"  # the PNG reference() wrote, read as a split
    record = Record(
        1, "1.jpg", "1.png", 4, 8, tuple(Segment(**s, bbox=(0, 0, 0, 0)) for s in segments)
    )
    categories = [Category(c["id"], c["name"], bool(c["isthing"]), (0, 0, 0)) for c in CATEGORIES]
    cache = GroundTruthCache(PanopticSplit(categories, [record], gt_dir, tmp_path))
    evaluator = PQEvaluator(CATEGORIES)
    evaluator.add(pred_ids, pred[1], *cache.get(0))
    assert_same(evaluator.result(), expected)


def test_ground_truth_area_comes_from_the_json(tmp_path: Path) -> None:
    gt_ids, segments = base_gt()
    segments[0]["area"] = 10  # the PNG has 6 px of segment 7
    pred_ids = np.where(gt_ids == 7, 70, 90).astype(np.int32)
    pred = (pred_ids, pred_segments({70: THING, 90: STUFF}))
    # IoU = 6 / (6 + 10 - 6) = 0.6
    assert stats((gt_ids, segments), pred)[THING] == (1, 0, 0, pytest.approx(0.6))
    assert_parity(tmp_path, [(gt_ids, segments)], [pred])


def test_merged_dropped_and_mislabelled_segments(tmp_path: Path) -> None:
    ids = np.full((6, 6), 9, np.int32)
    ids[0:2, 0:2] = 1
    ids[0:2, 2:4] = 2  # two things side by side, 4 px each
    ids[4:6, 4:6] = 3
    ids[4:6, 0:2] = 4
    gt = (ids, gt_segments(ids, {1: THING, 2: THING, 3: THING, 4: THING2, 9: STUFF}))
    pred_ids = ids.copy()
    pred_ids[pred_ids == 2] = 1  # merged: IoU 4/8 with each -> no match
    pred_ids[pred_ids == 3] = 9  # dropped into stuff
    pred = (pred_ids, pred_segments({1: THING, 4: THING, 9: STUFF}))  # 4 mislabelled
    assert stats(gt, pred)[THING] == (0, 2, 3, 0.0)
    assert stats(gt, pred)[THING2] == (0, 0, 1, 0.0)
    assert_parity(tmp_path, [gt], [pred])


def test_ground_truth_ids_missing_from_the_json_are_not_void(tmp_path: Path) -> None:
    ids = np.full((4, 4), 9, np.int32)
    ids[:, 0:2] = 44  # in the PNG, not in the JSON: neither a segment nor void
    gt = (ids, gt_segments(ids, {9: STUFF}))
    pred_ids = np.full((4, 4), 9, np.int32)
    pred_ids[:, 0:2] = 5
    pred = (pred_ids, pred_segments({9: STUFF, 5: THING}))
    assert stats(gt, pred)[THING] == (0, 1, 0, 0.0)
    assert_parity(tmp_path, [gt], [pred])


def test_many_segments_take_the_sparse_path(tmp_path: Path) -> None:
    # 600 tiny segments: the pair matrix is too large for the dense bincount
    rng = np.random.default_rng(3)
    ids = (np.arange(30 * 40).reshape(30, 40) // 2 + 1).astype(np.int32)
    gt_cats = {int(i): int(rng.choice([THING, STUFF, THING2])) for i in np.unique(ids)}
    gt = (ids, gt_segments(ids, gt_cats, crowd=(7, 8)))
    pred_ids, pred_cats = perturb_prediction(ids, gt_cats, [THING, STUFF, THING2], rng)
    assert (len(gt_cats) + 2) * (len(pred_cats) + 1) > _DENSE_PAIR_CELLS
    assert_parity(tmp_path, [gt], [(pred_ids, pred_segments(pred_cats))])


def test_empty_things_report_zero_where_pq_compute_divides_by_zero(tmp_path: Path) -> None:
    ids = np.full((4, 4), 9, np.int32)
    gt = (ids, gt_segments(ids, {9: STUFF}))
    pred = (ids.copy(), pred_segments({9: STUFF}))
    result = ours([gt], [pred])
    assert result["Things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    assert result["Stuff"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}
    with pytest.raises(ZeroDivisionError):
        reference(tmp_path, [gt], [pred])
    # panopticapi's own statistics and averages, for the groups it can average
    gt_json, gt_dir = str(tmp_path / "gt" / "panoptic.json"), tmp_path / "gt" / "png"
    annotations = json.loads(Path(gt_json).read_text())["annotations"]
    pred_annotations = json.loads((tmp_path / "pred" / "panoptic.json").read_text())
    pairs = list(zip(annotations, pred_annotations["annotations"], strict=True))
    categories = {c["id"]: c for c in CATEGORIES}
    with contextlib.redirect_stdout(io.StringIO()):
        stat = pq_compute_single_core(0, pairs, gt_dir, tmp_path / "pred" / "png", categories)
    for group, isthing in (("All", None), ("Stuff", False)):
        expected, _ = stat.pq_average(categories, isthing=isthing)
        assert result[group] == pytest.approx(expected, abs=TOLERANCE)


def test_no_categories_counted_at_all() -> None:
    ids = np.zeros((3, 3), np.int32)  # all void, no segments anywhere
    result = ours([(ids, [])], [(ids.copy(), [])])
    for group in ("All", "Things", "Stuff"):
        assert result[group] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


def test_unmatched_predictions_and_an_empty_prediction(tmp_path: Path) -> None:
    gt = base_gt()
    empty = (np.zeros_like(gt[0]), [])
    assert stats(gt, empty)[THING] == (0, 0, 1, 0.0)
    spurious = gt[0].copy()
    spurious[3, :] = 77
    spurious_pred = (spurious, pred_segments({7: THING, 9: STUFF, 77: THING2}))
    assert stats(gt, spurious_pred)[THING2] == (0, 1, 0, 0.0)
    assert_parity(tmp_path, [gt, gt], [empty, spurious_pred])


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("pred_ids_change", "pred_cats", "message"),
    [
        ({5: 6}, {5: THING}, "in the predicted PNG but not in the prediction's segments_info"),
        ({}, {5: THING, 8: THING}, "in the prediction's segments_info but not in its PNG"),
        ({}, {5: 99}, "unknown category_id: {5: 99}"),
        ({5: 0}, {0: THING}, "segment id 0 is void"),
    ],
)
def test_inconsistent_predictions_are_named(pred_ids_change, pred_cats, message) -> None:
    gt_ids = np.full((4, 4), 9, np.int32)
    pred_ids = np.full((4, 4), 5, np.int32)
    for old, new in pred_ids_change.items():
        pred_ids[pred_ids == old] = new
    evaluator = PQEvaluator(CATEGORIES)
    with pytest.raises(PQInputError, match="image 42: .*" + message.replace("{", r"\{")):
        evaluator.add(
            pred_ids,
            pred_segments(pred_cats),
            gt_ids,
            gt_segments(gt_ids, {9: STUFF}),
            image_id=42,
        )


def test_bad_maps_and_fields_are_named() -> None:
    evaluator = PQEvaluator(CATEGORIES)
    gt_ids = np.full((4, 4), 9, np.int32)
    segs = gt_segments(gt_ids, {9: STUFF})
    with pytest.raises(PQInputError, match="shape"):
        evaluator.add(np.zeros((4, 5), np.int32), [], gt_ids, segs)
    with pytest.raises(PQInputError, match="integer"):
        evaluator.add(np.zeros((4, 4), np.float32), [], gt_ids, segs)
    with pytest.raises(PQInputError, match="integer"):
        evaluator.add(torch.zeros(4, 4), [], torch.from_numpy(gt_ids), segs)
    with pytest.raises(PQInputError, match="iscrowd"):
        evaluator.add(gt_ids, [], gt_ids, [{"id": 9, "category_id": STUFF, "area": 16}])
    with pytest.raises(PQInputError, match="different categories"):
        evaluator.merge(PQEvaluator(CATEGORIES[:2]))
    with pytest.raises(PQInputError, match="at least one category"):
        PQEvaluator([])


# ------------------------------------------------------------------- inputs and accumulation


def test_torch_tensors_dataclasses_and_merge_agree_with_numpy_dicts() -> None:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(4):
        ids = np.full((12, 16), 9, np.int32)
        ids[2:7, 3:9], ids[5:11, 8:14] = 1, 2
        cats = {1: THING, 2: THING2, 9: STUFF}
        pred_ids, pred_cats = perturb_prediction(ids, cats, [THING, STUFF, THING2], rng)
        images.append(((ids, gt_segments(ids, cats)), (pred_ids, pred_segments(pred_cats))))
    expected = ours([g for g, _ in images], [p for _, p in images])

    categories = [Category(c["id"], c["name"], bool(c["isthing"]), (0, 0, 0)) for c in CATEGORIES]
    first, second = PQEvaluator(categories), PQEvaluator(categories)
    for k, ((gt_ids, gt_segs), (pred_ids, pred_segs)) in enumerate(images):
        segments = [
            Segment(s["id"], s["category_id"], s["area"], bool(s["iscrowd"]), (0, 0, 0, 0))
            for s in gt_segs
        ]
        target = first if k < 2 else second
        target.add(torch.from_numpy(pred_ids).long(), pred_segs, torch.from_numpy(gt_ids), segments)
    first.merge(pickle.loads(pickle.dumps(second)))
    assert first.images == 4
    assert_same(first.result(), expected)


def test_ids_beyond_the_png_range_give_the_same_result() -> None:
    # in-memory maps may use any integer ids (e.g. category * 2**32 + instance)
    rng = np.random.default_rng(2)
    ids = np.full((16, 20), 9, np.int64)
    ids[1:9, 2:12], ids[6:15, 9:19] = 1, 2
    cats = {1: THING, 2: THING2, 9: STUFF}
    pred_ids, pred_cats = perturb_prediction(ids, cats, [THING, STUFF, THING2], rng)
    gt = (ids, gt_segments(ids, cats))
    pred = (pred_ids, pred_segments(pred_cats))
    big = 2**40
    big_gt = (np.where(ids > 0, ids + big, 0), [{**s, "id": s["id"] + big} for s in gt[1]])
    big_pred = (
        np.where(pred_ids > 0, pred_ids.astype(np.int64) + big, 0),
        [{**s, "id": s["id"] + big} for s in pred[1]],
    )
    assert_same(ours([big_gt], [big_pred]), ours([gt], [pred]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_give_the_same_result() -> None:
    rng = np.random.default_rng(1)
    ids = np.full((48, 64), 9, np.int32)
    ids[5:30, 5:40], ids[20:45, 30:60] = 1, 2
    cats = {1: THING, 2: THING2, 9: STUFF}
    pred_ids, pred_cats = perturb_prediction(ids, cats, [THING, STUFF, THING2], rng)
    expected = ours([(ids, gt_segments(ids, cats))], [(pred_ids, pred_segments(pred_cats))])
    evaluator = PQEvaluator(CATEGORIES)
    evaluator.add(
        torch.from_numpy(pred_ids).cuda(),
        pred_segments(pred_cats),
        torch.from_numpy(ids).cuda(),
        gt_segments(ids, cats),
    )
    assert_same(evaluator.result(), expected)


def test_runs_cover_every_pixel_once() -> None:
    gt = np.array([[1, 1, 2], [2, 2, 2]], np.int32)
    pred = np.array([[5, 6, 6], [6, 6, 0]], np.int32)
    gt_vals, pred_vals, lengths = PairRuns()(gt, pred)
    assert gt_vals.tolist() == [1, 1, 2, 2]
    assert pred_vals.tolist() == [5, 6, 6, 0]
    assert lengths.tolist() == [1, 1, 3, 1]
    empty = PairRuns()(np.zeros((0, 4), np.int32), np.zeros((0, 4), np.int32))
    assert [a.size for a in empty] == [0, 0, 0]
    # from RGB colours, byte-wise: the same runs, ids computed at the run starts
    # (gt ids differ in the blue byte only, predicted ids in the green byte only)
    rgb = PairRuns().rgb(id2rgb(gt * 65536 + 7), id2rgb(pred * 256))
    assert [a.tolist() for a in rgb] == [
        [65543, 65543, 131079, 131079],
        [1280, 1536, 1536, 0],
        [1, 1, 3, 1],
    ]
    # the device path (used for CUDA tensors) is device-agnostic: check it on the CPU
    on_device = _runs_torch(torch.from_numpy(gt), torch.from_numpy(pred).long())
    assert [a.tolist() for a in on_device] == [[1, 1, 2, 2], [5, 6, 6, 0], [1, 1, 3, 1]]


def test_format_table_is_what_pq_compute_prints(tmp_path: Path) -> None:
    gt = base_gt()
    pred_ids = gt[0].copy()
    pred_ids[0, :] = 3
    pred = (pred_ids, pred_segments({7: THING, 9: STUFF, 3: THING2}))
    gt_json, gt_dir = write_set(tmp_path / "gt", [gt], CATEGORIES)
    pred_json, pred_dir = write_set(tmp_path / "pred", [pred], CATEGORIES)
    expected, printed = run_pq_compute(gt_json, gt_dir, pred_json, pred_dir)
    table = format_table(ours([gt], [pred]))
    assert table in printed
    assert table == format_table(expected)
    assert table.splitlines()[2].startswith("All       |")


def test_perturb_prediction_is_deterministic_and_consistent() -> None:
    ids = np.full((20, 30), 9, np.int32)
    ids[2:10, 2:12], ids[8:18, 15:28] = 1, 2
    cats = {1: THING, 2: THING, 9: STUFF}
    first = perturb_prediction(ids, cats, [1, 2, 3], np.random.default_rng(5))
    second = perturb_prediction(ids, cats, [1, 2, 3], np.random.default_rng(5))
    assert np.array_equal(first[0], second[0]) and first[1] == second[1]
    present = set(np.unique(first[0]).tolist()) - {0}
    assert present == set(first[1])
    assert not present & {1, 2, 9}  # renamed


# ------------------------------------------------------------------- real and synthetic data


def split_images(split: PanopticSplit) -> list[Image]:
    return [
        (split.load_panoptic(r, check=False), [s.to_json() for s in r.segments])
        for r in split.records
    ]


def perturbed(images: list[Image], category_ids: list[int], seed: int, **kw) -> list[Image]:
    rng = np.random.default_rng(seed)
    out = []
    for ids, segments in images:
        cats = {s["id"]: s["category_id"] for s in segments}
        pred_ids, pred_cats = perturb_prediction(ids, cats, category_ids, rng, **kw)
        out.append((pred_ids, pred_segments(pred_cats)))
    return out


def test_parity_on_the_real_coco_sample(tmp_path: Path, coco_sample: PanopticSplit) -> None:
    categories = [c.to_json() for c in coco_sample.categories]
    category_ids = [c["id"] for c in categories]
    gt = split_images(coco_sample)
    assert sum(s["iscrowd"] for _, segs in gt for s in segs) > 0  # the sample has crowd
    assert sum(int((ids == 0).sum()) for ids, _ in gt) > 0  # and void
    pred = perturbed(gt, category_ids, seed=0, p_drop=0.15, p_merge=0.15, p_relabel=0.15)
    result = ours(gt, pred, categories)
    gt_json, gt_dir = write_set(tmp_path / "gt", gt, categories)
    pred_json, pred_dir = write_set(tmp_path / "pred", pred, categories)
    expected, _ = run_pq_compute(gt_json, gt_dir, pred_json, pred_dir)
    assert_same(result, expected)
    assert 0.0 < result["All"]["pq"] < 1.0
    assert ours(gt, gt, categories)["All"]["pq"] == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_on_small_synthetic_sets(tmp_path: Path, synth_val: PanopticSplit, seed) -> None:
    categories = [c.to_json() for c in synth_val.categories]
    gt = split_images(synth_val)
    pred = perturbed(gt, [c["id"] for c in categories], seed, max_shift=3)
    result = ours(gt, pred, categories)
    gt_json, gt_dir = write_set(tmp_path / "gt", gt, categories)
    pred_json, pred_dir = write_set(tmp_path / "pred", pred, categories)
    expected, _ = run_pq_compute(gt_json, gt_dir, pred_json, pred_dir)
    assert_same(result, expected)
    assert result["Things"]["n"] > 0 and result["Stuff"]["n"] > 0

"""Panoptic quality (PQ, SQ, RQ) with exactly the numbers of panopticapi's ``pq_compute``.

Every population member evaluates on the proxy validation split every round,
so PQ must be both *exact* (the controller's rewards compare members whose PQs
differ in the third decimal) and *cheap*. This module is the pure, in-memory
part: it takes decoded panoptic maps and the segment lists and accumulates the
per-category true positives, false positives, false negatives and IoU sums;
``eval/pq_files.py`` reads files around it.

How one image is evaluated, without a Python loop over pixels or segment pairs:

1. Run-length encode the pair of flattened maps: a run ends wherever the
   ground-truth id or the predicted id changes. Panoptic maps are made of
   regions, so a 480×640 pair has a few thousand runs instead of 307,200
   pixels; this is the only full-image pass (two comparisons, an ``or`` and
   one ``flatnonzero``), done on the maps' own device for torch tensors, and
   on the decoded RGB bytes directly for PNGs (no ``rgb2id`` pass).
2. Map the raw ids at the run starts to compact segment indices (one gather
   from a lookup table over the PNG id range) and ``bincount`` the runs'
   lengths over ``gt_index * (P + 1) + pred_index``: the intersection of every
   (ground truth, prediction) pair, the predictions' void overlap and areas.
3. Vector operations over the non-zero pairs for IoU, matching and the
   void/crowd rules.

Equivalent to ``np.unique`` of ``gt * 2**24 + pred`` over all pixels (what
pq_compute does), at a small fraction of its cost: no sort of 307,200 keys.

panopticapi's rules copied on purpose (``evaluation.pq_compute_single_core``):

- Ground-truth area comes from the JSON ``area``; prediction area is counted
  in the PNG.
- A pair is a candidate only if the categories agree and the ground truth is
  not crowd; ``IoU = |g∩p| / (|p| + |g| − |g∩p| − |p∩void|)`` and IoU > 0.5 is a
  match (unique by construction for consistent data).
- Unmatched non-crowd ground truth is a false negative. An unmatched
  prediction is ignored when more than half of it lies on void (id 0) or on
  the crowd region of its own category, where only the *last* crowd segment
  of each category counts; otherwise it is a false positive.
- Ground-truth pixels whose id the JSON does not list are neither void nor a
  segment; segments listed twice keep the last entry (dict semantics).
- Per-class values average over the categories with ``tp + fp + fn > 0``.

One deliberate difference: where Things or Stuff (or everything) has no
counted category, ``pq_compute`` divides by zero; here that group reports
``pq = sq = rq = 0.0`` with ``n = 0``.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["PQEvaluator", "PQInputError", "PairRuns", "format_table"]

_VOID = 0
# Pair matrices up to this many cells are counted with a dense bincount; larger
# ones (thousands of segments on each side) go through np.unique instead.
_DENSE_PAIR_CELLS = 1 << 16
_GROUPS = (("All", None), ("Things", True), ("Stuff", False))


class PQInputError(ValueError):
    """Predictions or ground truth that panopticapi would reject (or that make no sense)."""


def _rows(items: Sequence[Any], names: tuple[str, ...], what: str) -> dict[Any, tuple]:
    """The ``names`` fields of every item keyed by the first one (the last entry wins).

    This mirrors panopticapi's ``{el['id']: el for el in segments_info}``;
    items are mappings or plain objects (e.g. dataclasses) with those fields.
    """
    if items and not isinstance(items[0], Mapping):
        getter = operator.attrgetter(*names)
    else:
        getter = operator.itemgetter(*names)
    try:
        return {row[0]: row for row in map(getter, items)}
    except (KeyError, AttributeError, TypeError) as exc:
        raise PQInputError(f"{what}: every entry needs the fields {names}; {exc!r}") from None


_ID_RANGE = 256**3  # ids a panoptic PNG can hold: R + 256·G + 256²·B
_MAX_TABLE_SEGMENTS = 65534  # positions + 1 and the void marker must fit in uint16


class _CompactIds:
    """Maps raw segment ids to their positions in an image's segment list.

    Applied to the few thousand run values of each image, so it must cost
    little: a lookup table over the PNG id range (2**24 uint16 entries; the
    OS commits only the pages that are touched) makes it one gather. Ids
    outside that range, or more than 65,534 segments, take a binary search.
    """

    def __init__(self) -> None:
        self._table: np.ndarray | None = None

    def __call__(self, ids: np.ndarray, values: np.ndarray, void: int, missing: int) -> np.ndarray:
        """Position in ``ids`` of each value; ``void`` for id 0, ``missing`` for unlisted ids."""
        in_range = (
            ids.size < _MAX_TABLE_SEGMENTS
            and (values.size == 0 or (values.min() >= 0 and values.max() < _ID_RANGE))
            and (ids.size == 0 or (ids.min() >= 0 and ids.max() < _ID_RANGE))
        )
        if not in_range:
            return self._search(ids, values, void, missing)
        if self._table is None:
            self._table = np.zeros(_ID_RANGE, np.uint16)
        table = self._table
        table[ids] = np.arange(1, ids.size + 1)
        table[_VOID] = void + 1
        positions = table[values].astype(np.int64)
        table[ids] = 0
        table[_VOID] = 0
        positions -= 1
        positions[positions < 0] = missing
        return positions

    @staticmethod
    def _search(ids: np.ndarray, values: np.ndarray, void: int, missing: int) -> np.ndarray:
        order = np.argsort(ids)
        sorted_ids = np.append(ids[order], np.iinfo(np.int64).max)  # a sentinel: no bounds check
        idx = np.searchsorted(sorted_ids, values)
        positions = np.append(order, missing)[np.where(sorted_ids[idx] == values, idx, -1)]
        positions[values == _VOID] = void
        return positions

    def __getstate__(self) -> dict:  # the table is scratch, not state
        return {"_table": None}


def _is_torch_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to find out
    return torch is not None and isinstance(value, torch.Tensor)


def _check_integer(dtype: Any, what: str) -> None:
    if not np.issubdtype(np.dtype(dtype), np.integer):
        raise PQInputError(f"{what} must hold integer segment ids, got dtype {dtype}")


class PairRuns:
    """Run-length encoder of a (ground truth, prediction) pair of panoptic maps.

    ``encoder(gt, pred)`` takes id maps, ``encoder.rgb(gt, pred)`` the decoded
    (H, W, 3) uint8 PNGs; both return (gt id, pred id, length) of every run of
    constant (gt, pred) in the flattened maps, as int64 arrays. On RGB the
    comparison is byte-wise, three bytes back, and ids are computed for the run
    starts only, which saves a full-image ``rgb2id`` (or an RGBA decode) per
    PNG. Scratch is kept between calls: fresh 300 KB temporaries cost page
    faults that are a large part of the whole per-image time. Not thread-safe;
    use one per thread.
    """

    def __init__(self) -> None:
        self._change = np.empty(0, bool)
        self._other = np.empty(0, bool)

    def _starts(self, gt: np.ndarray, pred: np.ndarray, step: int) -> np.ndarray:
        """First element of each run of the flat arrays, in pixels of ``step`` elements."""
        if self._change.size != gt.size:
            self._change = np.empty(gt.size, bool)
            self._other = np.empty(gt.size, bool)
        change, other = self._change, self._other
        change[:step] = True
        np.not_equal(gt[step:], gt[:-step], out=change[step:])
        np.not_equal(pred[step:], pred[:-step], out=other[step:])
        np.logical_or(change[step:], other[step:], out=change[step:])
        starts = np.flatnonzero(change)
        if step > 1:  # up to `step` changed elements per pixel: keep each pixel once
            starts //= step
            first = np.empty(starts.size, bool)
            first[0] = True
            np.not_equal(starts[1:], starts[:-1], out=first[1:])
            starts = starts[first]
        return starts

    def __call__(
        self, gt: np.ndarray, pred: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _check_same_shape(gt, pred)
        gt, pred = gt.reshape(-1), pred.reshape(-1)
        if gt.size == 0:
            return _no_runs()
        starts = self._starts(gt, pred, 1)
        return gt[starts].astype(np.int64), pred[starts].astype(np.int64), _lengths(starts, gt.size)

    def rgb(
        self, gt_rgb: np.ndarray, pred_rgb: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs of two (H, W, 3) uint8 panoptic PNGs; ids are R + 256·G + 256²·B."""
        for rgb in (gt_rgb, pred_rgb):
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
                raise PQInputError(f"expected (H, W, 3) uint8 maps, got {rgb.dtype} {rgb.shape}")
        _check_same_shape(gt_rgb, pred_rgb)
        pixels = gt_rgb.shape[0] * gt_rgb.shape[1]
        if pixels == 0:
            return _no_runs()
        gt_bytes, pred_bytes = gt_rgb.reshape(-1), pred_rgb.reshape(-1)
        starts = self._starts(gt_bytes, pred_bytes, 3)
        red = starts * 3
        ids = [
            colours[red].astype(np.int64)
            | (colours[red + 1].astype(np.int64) << 8)
            | (colours[red + 2].astype(np.int64) << 16)
            for colours in (gt_bytes, pred_bytes)
        ]
        return ids[0], ids[1], _lengths(starts, pixels)


def _check_same_shape(gt: np.ndarray, pred: np.ndarray) -> None:
    if gt.shape != pred.shape:
        raise PQInputError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")


def _no_runs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    empty = np.empty(0, np.int64)
    return empty, empty, empty


def _lengths(starts: np.ndarray, size: int) -> np.ndarray:
    lengths = np.empty_like(starts)
    np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
    lengths[-1] = size - starts[-1]
    return lengths


def _runs_torch(gt: Any, pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``PairRuns`` on the tensors' device; only the (short) runs come back to the host."""
    import torch

    gt, pred = gt.detach().reshape(-1), pred.detach().reshape(-1)
    size = gt.numel()
    if size == 0:
        return _no_runs()
    change = torch.empty(size, dtype=torch.bool, device=gt.device)
    change[0] = True
    torch.ne(gt[1:], gt[:-1], out=change[1:])
    change[1:] |= pred[1:] != pred[:-1]
    starts = torch.nonzero(change).squeeze(1)
    ends = torch.cat([starts[1:], starts.new_tensor([size])])
    runs = torch.stack([gt[starts].long(), pred[starts].long(), ends - starts]).cpu().numpy()
    return runs[0], runs[1], runs[2]


def _pair_table(
    gt_idx: np.ndarray, pred_idx: np.ndarray, lengths: np.ndarray, n_gt: int, n_pred: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts of one image from its runs in compact indices.

    Returns ``(rows, cols, inter)`` for every (gt segment, pred segment) pair
    that shares pixels, the predictions' areas and their overlap with void.
    Counts are float64 (exact for any image below 2**53 pixels), since they
    are only ever divided.
    """
    width = n_pred + 1
    keys = gt_idx * width + pred_idx
    if (n_gt + 2) * width <= _DENSE_PAIR_CELLS:
        counts = np.bincount(keys, weights=lengths, minlength=(n_gt + 2) * width)
        counts = counts.reshape(n_gt + 2, width)[:, :n_pred]
        pairs = counts[:n_gt]
        rows, cols = np.nonzero(pairs)
        return rows, cols, pairs[rows, cols], counts.sum(axis=0), counts[n_gt].copy()
    keys, inverse = np.unique(keys, return_inverse=True)
    totals = np.bincount(inverse.ravel(), weights=lengths)
    rows, cols = keys // width, keys % width
    is_pred = cols < n_pred
    pred_area = np.bincount(cols[is_pred], weights=totals[is_pred], minlength=n_pred)
    pred_void = np.zeros(n_pred)
    on_void = is_pred & (rows == n_gt)
    pred_void[cols[on_void]] = totals[on_void]
    real = is_pred & (rows < n_gt)
    return rows[real], cols[real], totals[real], pred_area, pred_void


class PQEvaluator:
    """Accumulates panopticapi's per-category statistics image by image.

    ``add`` takes one image's maps and segment lists, ``merge`` combines the
    statistics of evaluators that saw other images (other batches, workers or
    processes), and ``result`` returns exactly what ``pq_compute`` returns.
    An evaluator keeps scratch buffers, so use one per thread.
    """

    def __init__(self, categories: Sequence[Any]) -> None:
        rows = _rows(list(categories), ("id", "isthing"), "categories").values()
        if not rows:
            raise PQInputError("categories: at least one category is needed")
        self.category_ids: list[int] = [int(cat_id) for cat_id, _ in rows]
        self.category_isthing: list[bool] = [isthing == 1 for _, isthing in rows]
        self._category_pos = {cat_id: pos for pos, cat_id in enumerate(self.category_ids)}
        size = len(self.category_ids) + 1  # the last slot collects unknown gt categories
        self.iou = np.zeros(size, np.float64)
        self.tp = np.zeros(size, np.int64)
        self.fp = np.zeros(size, np.int64)
        self.fn = np.zeros(size, np.int64)
        self.images = 0
        self._runs = PairRuns()
        self._compact = _CompactIds()

    def __getstate__(self) -> dict:  # scratch buffers are not worth pickling
        state = dict(self.__dict__)
        state["_runs"] = PairRuns()
        return state

    # -- accumulation -----------------------------------------------------------------

    def add(
        self,
        pred_ids: Any,
        pred_segments: Sequence[Mapping],
        gt_ids: Any,
        gt_segments: Sequence[Any],
        image_id: Any = None,
    ) -> None:
        """Add one image.

        ``pred_ids`` and ``gt_ids`` are (H, W) integer id maps, numpy arrays or
        torch tensors (on a GPU the full-image pass runs there). ``pred_segments``
        are ``{"id", "category_id"}`` (area is counted in the map, as panopticapi
        does); ``gt_segments`` are ``{"id", "category_id", "area", "iscrowd"}``
        mappings or objects with those attributes (area as given, as
        panopticapi does). ``image_id`` only names the image in errors.
        """
        on_device = _is_torch_tensor(pred_ids) or _is_torch_tensor(gt_ids)
        if not on_device:
            gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
        if tuple(pred_ids.shape) != tuple(gt_ids.shape):
            raise PQInputError(
                f"image {image_id}: prediction shape {tuple(pred_ids.shape)} "
                f"differs from ground truth shape {tuple(gt_ids.shape)}"
            )
        if on_device:
            gt_vals, pred_vals, lengths = self._runs_of_tensors(pred_ids, gt_ids, image_id)
        else:
            _check_integer(gt_ids.dtype, f"image {image_id}: ground truth map")
            _check_integer(pred_ids.dtype, f"image {image_id}: prediction map")
            gt_vals, pred_vals, lengths = self._runs(gt_ids, pred_ids)
        self.add_runs(gt_vals, pred_vals, lengths, pred_segments, gt_segments, image_id)

    def _runs_of_tensors(
        self, pred_ids: Any, gt_ids: Any, image_id: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        device = next(t.device for t in (pred_ids, gt_ids) if isinstance(t, torch.Tensor))
        gt_t = torch.as_tensor(gt_ids, device=device)
        pred_t = torch.as_tensor(pred_ids, device=device)
        for tensor, what in ((gt_t, "ground truth map"), (pred_t, "prediction map")):
            if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
                raise PQInputError(
                    f"image {image_id}: {what} must hold integer ids, got {tensor.dtype}"
                )
        if device.type == "cpu":  # numpy's kernels are the faster ones on a CPU
            return self._runs(gt_t.detach().numpy(), pred_t.detach().numpy())
        # torch's wide unsigned types lack most GPU kernels
        wide_unsigned = {getattr(torch, name, None) for name in ("uint16", "uint32", "uint64")}
        gt_t, pred_t = (t.long() if t.dtype in wide_unsigned else t for t in (gt_t, pred_t))
        return _runs_torch(gt_t, pred_t)

    def add_runs(
        self,
        gt_vals: np.ndarray,
        pred_vals: np.ndarray,
        lengths: np.ndarray,
        pred_segments: Sequence[Mapping],
        gt_segments: Sequence[Any],
        image_id: Any = None,
    ) -> None:
        """Add one image given as runs of constant (gt id, pred id) with their pixel counts.

        The entry point for callers that already hold the runs (the file path
        decodes PNGs straight into them); ``add`` computes them from maps.
        """
        where = f"image {image_id}"
        gt = _rows(gt_segments, ("id", "category_id", "area", "iscrowd"), f"{where} gt")
        pred = _rows(pred_segments, ("id", "category_id"), f"{where} prediction")
        if _VOID in gt or _VOID in pred:
            raise PQInputError(f"{where}: segment id 0 is void and cannot name a segment")
        n_gt, n_pred, n_cats = len(gt), len(pred), len(self.category_ids)
        category_pos = self._category_pos

        # Per segment (a few dozen): category positions, crowd flags, JSON areas.
        pred_cat_list = [category_pos.get(cat_id, -1) for _, cat_id in pred.values()]
        if -1 in pred_cat_list:
            bad = {seg: cat for seg, cat in pred.values() if cat not in category_pos}
            raise PQInputError(f"{where}: predicted segments with unknown category_id: {bad}")
        pred_cat = np.array(pred_cat_list, np.int64)
        gt_cat = np.array([category_pos.get(row[1], n_cats) for row in gt.values()], np.int64)
        gt_crowd = np.array([row[3] == 1 for row in gt.values()], bool)
        gt_area = np.array([row[2] for row in gt.values()], np.float64)
        # The last crowd segment of each category (JSON order) is its crowd region.
        crowd_of_cat = {int(gt_cat[i]): i for i in np.flatnonzero(gt_crowd).tolist()}

        # Compact indices: gt 0..G-1 (JSON order), G = void, G+1 = ids the JSON does not
        # list; pred 0..P-1 (JSON order), P = void.
        gt_idx = self._compact(np.fromiter(gt, np.int64, n_gt), gt_vals, n_gt, n_gt + 1)
        pred_idx = self._compact(np.fromiter(pred, np.int64, n_pred), pred_vals, n_pred, -1)
        if (pred_idx < 0).any():
            unlisted = np.unique(pred_vals[pred_idx < 0])
            raise PQInputError(
                f"{where}: segment ids {unlisted.tolist()} are in the predicted PNG but "
                "not in the prediction's segments_info"
            )

        rows, cols, inter, pred_area, pred_void = _pair_table(
            gt_idx, pred_idx, lengths, n_gt, n_pred
        )
        if n_pred and not pred_area.all():
            absent = [seg for seg, area in zip(pred, pred_area, strict=True) if not area]
            raise PQInputError(
                f"{where}: segment ids {absent} are in the prediction's segments_info "
                "but not in its PNG"
            )

        # Candidates: same category and gt not crowd (a crowd row matches no category).
        gt_match_cat = np.where(gt_crowd, -1, gt_cat)
        same = gt_match_cat[rows] == pred_cat[cols]
        m_rows, m_cols, m_inter = rows[same], cols[same], inter[same]
        union = pred_area[m_cols] + gt_area[m_rows] - m_inter - pred_void[m_cols]
        if union.size and union.min() <= 0:  # inconsistent JSON areas: pq_compute's inf/nan
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = m_inter / union
        else:
            iou = m_inter / union
        match = iou > 0.5
        m_rows, m_cols, iou = m_rows[match], m_cols[match], iou[match]
        size = n_cats + 1
        matched_cats = gt_cat[m_rows]
        self.tp += np.bincount(matched_cats, minlength=size)
        self.iou += np.bincount(matched_cats, weights=iou, minlength=size)

        unmatched_gt = ~gt_crowd
        unmatched_gt[m_rows] = False
        self.fn += np.bincount(gt_cat[unmatched_gt], minlength=size)

        # An unmatched prediction more than half on void or its category's crowd is ignored.
        ignored = pred_void
        if crowd_of_cat:
            crowd_row = np.full(size, -1, np.int64)
            crowd_row[list(crowd_of_cat)] = list(crowd_of_cat.values())
            on_crowd = crowd_row[pred_cat[cols]] == rows  # at most one pair per prediction
            ignored = pred_void.copy()
            ignored[cols[on_crowd]] += inter[on_crowd]
        false_pos = ~(ignored / pred_area > 0.5)
        false_pos[m_cols] = False
        self.fp += np.bincount(pred_cat[false_pos], minlength=size)
        self.images += 1

    def merge(self, other: PQEvaluator) -> None:
        """Add the statistics of ``other`` (same categories) to this evaluator."""
        if (other.category_ids, other.category_isthing) != (
            self.category_ids,
            self.category_isthing,
        ):
            raise PQInputError("cannot merge PQ evaluators built on different categories")
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.images += other.images

    # -- results ----------------------------------------------------------------------

    def result(self) -> dict:
        """``pq_compute``'s dict: All/Things/Stuff ``{pq, sq, rq, n}`` and ``per_class``.

        Averages run over the categories with ``tp + fp + fn > 0``, summed in
        category order as panopticapi does; an empty group gives 0.0 and n = 0.
        """
        results: dict = {}
        for name, isthing in _GROUPS:
            pq = sq = rq = 0.0
            n = 0
            per_class = {}
            for pos, cat_id in enumerate(self.category_ids):
                if isthing is not None and self.category_isthing[pos] != isthing:
                    continue
                iou, tp = float(self.iou[pos]), int(self.tp[pos])
                fp, fn = int(self.fp[pos]), int(self.fn[pos])
                if tp + fp + fn == 0:
                    per_class[cat_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                    continue
                n += 1
                denominator = tp + 0.5 * fp + 0.5 * fn
                scores = {
                    "pq": iou / denominator,
                    "sq": iou / tp if tp else 0.0,
                    "rq": tp / denominator,
                }
                per_class[cat_id] = scores
                pq, sq, rq = pq + scores["pq"], sq + scores["sq"], rq + scores["rq"]
            results[name] = {
                "pq": pq / n if n else 0.0,
                "sq": sq / n if n else 0.0,
                "rq": rq / n if n else 0.0,
                "n": n,
            }
            if name == "All":
                results["per_class"] = per_class
        return results


def format_table(result: Mapping) -> str:
    """The table ``pq_compute`` prints (PQ, SQ, RQ in percent and N), without a final newline."""
    lines = [
        "{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"),
        "-" * (10 + 7 * 4),
    ]
    for name, _ in _GROUPS:
        group = result[name]
        lines.append(
            f"{name:10s}| {100 * group['pq']:5.1f}  {100 * group['sq']:5.1f}  "
            f"{100 * group['rq']:5.1f} {group['n']:5d}"
        )
    return "\n".join(lines)

"""Panoptic quality of a model on a split, in percent (the paper's and the controller's unit).

A worker evaluates on the same proxy-val split every round, so the decoded
ground truth is kept in memory (:class:`GroundTruthCache`): compact index maps
(uint8 where an image has < 256 segments) with the segments relabelled 1..k,
which the PQ evaluator accepts like the original ids. Only the images are
decoded again each round, in a DataLoader so that decoding overlaps inference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer_image.data.coco_panoptic import PanopticSplit
from trainer_image.data.loader import normalize_image
from trainer_image.eval.pq import PQEvaluator


class GroundTruthCache:
    """Decoded ground truth of a split, decoded on first use and kept."""

    def __init__(self, split: PanopticSplit) -> None:
        self.split = split
        self._entries: dict[int, tuple[np.ndarray, list[dict[str, Any]]]] = {}

    def get(self, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(index map, segments) of record ``index``; segment k of ``segments_info`` has id
        k + 1 in the map.

        The segments keep their JSON order, not id order: ``pq_compute`` takes the *last*
        crowd segment of a category in ``segments_info`` as its crowd region, so sorting
        would change which of two crowd segments of one category counts, and the PQ.
        """
        if index not in self._entries:
            record = self.split.records[index]
            ids = self.split.load_panoptic(record)
            segments = record.segments
            json_ids = np.array([s.id for s in segments], dtype=np.int64)
            by_id = np.argsort(json_ids)
            lookup_ids = np.concatenate([[0], json_ids[by_id]])  # sorted, for searchsorted
            # position in lookup_ids -> compact id (0 void, k + 1 for the k-th JSON segment)
            compact_of = np.concatenate([[0], by_id + 1])
            dtype = np.uint8 if len(segments) < 256 else np.int32
            # ids are checked against segments_info by load_panoptic, so every one is found
            compact = compact_of[np.searchsorted(lookup_ids, ids)].astype(dtype)
            entries = [
                {"id": k + 1, "category_id": s.category_id, "area": s.area, "iscrowd": s.iscrowd}
                for k, s in enumerate(segments)
            ]
            self._entries[index] = (compact, entries)
        return self._entries[index]


class _Images(Dataset):
    """Normalised images of a split by record index (ground truth comes from the cache)."""

    def __init__(self, split: PanopticSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.records)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, normalize_image(self.split.load_image(self.split.records[index]))


class _SameSizeBatches(Sampler):
    """Consecutive records of one size, at most ``batch_size`` per batch (COCO sizes vary)."""

    def __init__(self, split: PanopticSplit, batch_size: int) -> None:
        self.batches: list[list[int]] = []
        for index, record in enumerate(split.records):
            size = (record.height, record.width)
            last = self.batches[-1] if self.batches else None
            if last and len(last) < batch_size and self._size(split, last[0]) == size:
                last.append(index)
            else:
                self.batches.append([index])

    @staticmethod
    def _size(split: PanopticSplit, index: int) -> tuple[int, int]:
        record = split.records[index]
        return record.height, record.width

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


def _collate(items: Sequence[tuple[int, torch.Tensor]]) -> tuple[list[int], torch.Tensor]:
    return [index for index, _ in items], torch.stack([image for _, image in items])


def summarize(result: dict[str, Any]) -> dict[str, float]:
    """``pq_compute``'s result as the flat percentages every metrics file reports."""
    return {
        "pq": 100.0 * result["All"]["pq"],
        "pq_th": 100.0 * result["Things"]["pq"],
        "pq_st": 100.0 * result["Stuff"]["pq"],
        "sq": 100.0 * result["All"]["sq"],
        "rq": 100.0 * result["All"]["rq"],
    }


def evaluate_pq(
    model: Any,
    split: PanopticSplit,
    batch_size: int = 4,
    cache: GroundTruthCache | None = None,
    workers: int = 0,
) -> dict[str, float]:
    """PQ, PQ_th, PQ_st, SQ, RQ of ``model.predict`` on ``split``, in percent (0..100)."""
    if cache is None:
        cache = GroundTruthCache(split)
    elif cache.split is not split:
        raise ValueError("the ground-truth cache belongs to another split")
    evaluator = PQEvaluator(split.categories)
    loader = DataLoader(
        _Images(split),
        batch_sampler=_SameSizeBatches(split, max(1, batch_size)),
        collate_fn=_collate,
        num_workers=workers,
    )
    for indices, images in loader:
        predictions = model.predict(images)
        for index, prediction in zip(indices, predictions, strict=True):
            gt_ids, gt_segments = cache.get(index)
            evaluator.add(
                prediction.ids,
                prediction.segments,
                gt_ids,
                gt_segments,
                image_id=split.records[index].image_id,
            )
    return summarize(evaluator.result())

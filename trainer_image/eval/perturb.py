"""Predictions of controlled quality, made from ground truth, to check an evaluator against
``pq_compute`` and to benchmark it (the tests and ``bench/bench_pq.py`` share them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

_VOID = 0


def perturb_prediction(
    ids: np.ndarray,
    categories_of: Mapping[int, int],
    category_ids: Sequence[int],
    rng: np.random.Generator,
    *,
    p_drop: float = 0.1,
    p_merge: float = 0.1,
    p_shift: float = 0.3,
    p_relabel: float = 0.1,
    max_shift: int = 6,
    max_spurious: int = 3,
) -> tuple[np.ndarray, dict[int, int]]:
    """A prediction made from a ground-truth map: ``(pred ids (H, W) int32, {id: category_id})``.

    ``categories_of`` maps each non-void id of ``ids`` to its category (crowd
    segments included: a model predicts them as ordinary segments). Each
    segment is, independently, dropped to void, merged into another segment,
    shifted by up to ``max_shift`` pixels (its old place becomes void), or
    relabelled to another category; up to ``max_spurious`` rectangles of a
    random category are added; finally every id is renamed to a random one,
    so prediction and ground truth never share ids by accident.
    """
    pred = np.asarray(ids).astype(np.int32, copy=True)
    height, width = pred.shape
    labels = {int(k): int(v) for k, v in categories_of.items()}
    choices = np.asarray(category_ids, np.int64)
    for seg_id in sorted(labels):
        if seg_id not in labels:  # merged away earlier
            continue
        action = rng.random()
        if action < p_drop:
            pred[pred == seg_id] = _VOID
            del labels[seg_id]
        elif action < p_drop + p_merge and len(labels) > 1:
            others = [other for other in labels if other != seg_id]
            into = int(rng.choice(others))
            pred[pred == seg_id] = into
            del labels[seg_id]
        elif action < p_drop + p_merge + p_shift:
            mask = pred == seg_id
            dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
            moved = np.zeros_like(mask)
            moved[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = mask[
                max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
            ]
            pred[mask] = _VOID
            pred[moved] = seg_id
        elif action < p_drop + p_merge + p_shift + p_relabel:
            labels[seg_id] = int(rng.choice(choices[choices != labels[seg_id]]))
    next_id = max(labels, default=0) + 1
    for _ in range(int(rng.integers(0, max_spurious + 1))):
        box_h, box_w = (int(rng.integers(2, max(3, size // 4))) for size in (height, width))
        y, x = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
        pred[y : y + box_h, x : x + box_w] = next_id
        labels[next_id] = int(rng.choice(choices))
        next_id += 1
    present = np.unique(pred)
    present = present[present != _VOID]
    new_ids = rng.choice(256**3 - 1, size=present.size, replace=False).astype(np.int32) + 1
    lookup = np.concatenate([[_VOID], present])
    renamed = np.concatenate([[_VOID], new_ids]).astype(np.int32)[np.searchsorted(lookup, pred)]
    return renamed, {int(n): labels[int(o)] for o, n in zip(present, new_ids, strict=True)}

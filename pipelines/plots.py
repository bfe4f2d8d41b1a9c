"""PNG plots of a run, for people: loss weights over rounds, PQ per member, predictions.

Pure functions of a run record with its rounds (``GET /v1/runs/{run}?history=true``,
typed by :class:`~controller_service.contract.schemas.RunRecord`) or of arrays;
matplotlib with the Agg backend so they work on a headless machine or in a pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from controller_service.contract.schemas import RunRecord


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_weights(run: RunRecord, path: str | Path) -> Path:
    """Mean weights (Eq. 1, when the strategy has a policy) and the best member's weights of
    every round, every candidate in grey, one panel per loss.

    Log scale, because panoptic loss weights differ by orders of magnitude.
    """
    plt = _pyplot()
    names = list(run.loss_names)
    history = [item for item in run.history or [] if item.round >= 1]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    rounds = [item.round for item in history]
    for i, name in enumerate(names):
        ax = axes[0][i]
        for item in history:
            ax.scatter(
                [item.round] * len(item.candidates),
                [c.weights[name] for c in item.candidates],
                s=10,
                color="0.7",
                zorder=1,
            )
        if all(item.mean_weights is not None for item in history):
            means = [item.mean_weights[name] for item in history]  # type: ignore[index]
            ax.plot(rounds, means, "o-", label="policy mean λ", zorder=2)
        best = [
            item.candidates[item.best_member].weights[name]
            if item.best_member is not None
            else np.nan
            for item in history
        ]
        ax.plot(rounds, best, "s--", label="best member λ", zorder=3)
        ax.set_yscale("log")
        ax.set_title(f"weight of '{name}'")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_pq(run: RunRecord, path: str | Path) -> Path:
    """PQ of every trained member per round, with the best line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    best_x, best_y = [], []
    for item in run.history or []:
        pqs = [(c.member, c.pq) for c in item.candidates if c.pq is not None]
        if not pqs:
            continue
        members, values = zip(*pqs, strict=True)
        ax.scatter([item.round] * len(values), values, s=14, c=members, cmap="tab10", zorder=2)
        best_x.append(item.round)
        best_y.append(max(values))
    ax.plot(best_x, best_y, "k-", label="best of round", zorder=1)
    ax.set_xlabel("round (0 = pseudo epoch)")
    ax.set_ylabel("PQ on proxy-val")
    ax.set_title(f"run {run.id}: PQ per member")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def colorize(ids: np.ndarray) -> np.ndarray:
    """Segment ids → RGB with a stable pseudo-random colour per id (void = black)."""
    ids = np.asarray(ids, dtype=np.int64)
    hashed = (ids * 2654435761) & 0xFFFFFF
    rgb = np.stack([(hashed >> s) & 0xFF for s in (16, 8, 0)], axis=-1).astype(np.uint8)
    rgb[ids == 0] = 0
    return rgb


def plot_predictions(
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | Path
) -> Path:
    """Rows of (image, ground truth, prediction); image uint8 HxWx3, the others id maps."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(samples), 3, figsize=(7.5, 2.5 * len(samples)), squeeze=False)
    for row, (image, gt, pred) in enumerate(samples):
        for col, (title, picture) in enumerate(
            (("image", image), ("ground truth", colorize(gt)), ("prediction", colorize(pred)))
        ):
            ax = axes[row][col]
            ax.imshow(picture, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path

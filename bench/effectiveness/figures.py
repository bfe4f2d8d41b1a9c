"""The benchmark's figures, drawn with matplotlib's Agg backend from cell results: PQ
against cost, and the loss weights (learned, fixed, published, equal) per loss. Used by the
small scale's report (``report``) and the held-out scales' (``held_out``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.effectiveness.plan import (
    DEFAULTS_VARIANT,
    EXPLORE,
    LEARNABLE_STRATEGIES,
    SERVICE_VARIANT,
    TRANSFER,
    UNTRAINED,
    VARIANTS,
    Scale,
    cell_key,
    explore_row_name,
    has_grids,
    model_facts,
    neutral_centre,
)
from bench.effectiveness.results import TableRow

if TYPE_CHECKING:
    from bench.effectiveness.held_out import PhaseTable

PQ_PLOT = "pq_vs_cost.png"


WEIGHTS_PLOT = "weights.png"


def weights_plot_name(variant: str) -> str:
    return WEIGHTS_PLOT if variant == "default" else f"weights-{variant}.png"


def pq_plot_name(phase: str) -> str:
    return f"pq_vs_cost-{phase}.png"


def static_weights_plot_name(phase: str) -> str:
    return f"weights-static-{phase}.png"


def held_out_weights_plot_name(variant: str, phase: str) -> str:
    return f"{weights_plot_name(variant).removesuffix('.png')}-{phase}.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def explored_variants(
    results: Mapping[str, Mapping[str, Any]], scale: Scale, seeds: Sequence[int]
) -> list[str]:
    """The exploration variants with at least one result, default first."""
    return [
        v
        for v in VARIANTS
        if v == "default" or any(cell_key(scale, explore_row_name(v), s) in results for s in seeds)
    ]


JITTER = 0.035  # relative x offset between rows of equal cost, so their bars do not overlap
LABEL_GAP = 0.04  # the least height between two labels' baselines, as a share of the y-axis
LABEL_REACH = 0.3  # labels closer than this in log10(cost) may collide: they are spread apart
LABEL_SHIFT = 0.012  # a label's offset from its point, in log10(cost)
OFF_SCALE_BELOW = 0.5  # a row under this share of the median row's PQ is drawn off scale


def off_scale_floor(means: Sequence[float]) -> float:
    """The PQ under which a row counts as collapsed and is drawn off scale: a share of the
    (upper) median row's, so one collapse cannot stretch the axis the others share."""
    ordered = sorted(means)
    return OFF_SCALE_BELOW * ordered[len(ordered) // 2]


def spread_labels(heights: Sequence[float], gap: float) -> list[float]:
    """Label heights at least ``gap`` apart, in the order of ``heights``, each as near its
    own point as that allows (least squares): colliding labels form a block centred on
    their points, and blocks that then collide merge."""
    order = sorted(range(len(heights)), key=heights.__getitem__)
    blocks: list[list[int]] = []

    def start(block: list[int]) -> float:
        return sum(heights[j] - gap * k for k, j in enumerate(block)) / len(block)

    for i in order:
        blocks.append([i])
        while len(blocks) > 1 and start(blocks[-1]) < start(blocks[-2]) + gap * len(blocks[-2]):
            last = blocks.pop()
            blocks[-1].extend(last)
    placed = [0.0] * len(heights)
    for block in blocks:
        base = start(block)
        for k, j in enumerate(block):
            placed[j] = base + gap * k
    return placed


def _near_groups(xs: Sequence[float]) -> list[list[int]]:
    """Indices of ``xs`` (costs) chained by log-distances under LABEL_REACH."""
    order = sorted(range(len(xs)), key=xs.__getitem__)
    groups: list[list[int]] = []
    for i in order:
        if groups and math.log10(xs[i]) - math.log10(xs[groups[-1][-1]]) < LABEL_REACH:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _row_label(row: TableRow) -> str:
    label = row.row.name
    if row.row.variant == DEFAULTS_VARIANT:
        return label.replace(f"-{DEFAULTS_VARIANT}", " (service defaults)")
    if row.row.variant == SERVICE_VARIANT:
        return label.replace(f"-{SERVICE_VARIANT}", " (former defaults)")
    return label


def plot_pq_vs_cost(
    rows: Sequence[TableRow], path: Path, ylabel: str = "PQ on val (%), mean ± std over seeds"
) -> Path:
    """Tables 1 and 2 labelled (Ada-Segment red, baselines blue), ablations as small
    unlabelled green points; rows of equal cost side by side. A row that collapsed (under
    half the median row's PQ) is a triangle on the bottom edge, its PQ in its label, so
    it does not squash the rows that trained into a band. Labels of nearby costs stand in
    one column, spread apart and tied to their points by a thin line (the explorations'
    left of their points, the rest right)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    points = [r for r in rows if r.metrics["pq"] is not None and r.total_epochs is not None]
    if not points:
        return _save(fig, path)
    floor = off_scale_floor([r.metrics["pq"].mean for r in points])
    on_scale = [r for r in points if r.metrics["pq"].mean >= floor]
    low = min(r.metrics["pq"].mean - (r.metrics["pq"].std or 0.0) for r in on_scale)
    high = max(r.metrics["pq"].mean + (r.metrics["pq"].std or 0.0) for r in on_scale)
    margin = max(0.5, 0.08 * (high - low))
    bottom, top = low - margin, high + margin
    ax.set_ylim(bottom, top)
    by_cost: dict[float, list[TableRow]] = {}
    for row in points:
        by_cost.setdefault(row.total_epochs, []).append(row)
    labels: dict[bool, list[tuple[float, float, str]]] = {True: [], False: []}
    for cost, group in by_cost.items():
        group.sort(key=lambda r: r.metrics["pq"].mean)
        for k, row in enumerate(group):
            pq = row.metrics["pq"]
            x = cost * (1 + JITTER * (k - (len(group) - 1) / 2))
            ablation = row.row.section == "Ablations" and row.row.kind != UNTRAINED
            colour = "tab:green" if ablation else "tab:blue"
            if row.row.kind in (EXPLORE, TRANSFER) and not ablation:
                colour = "tab:red"
            off_scale = pq.mean < floor
            if off_scale:
                y = bottom + 0.01 * (top - bottom)
                ax.plot(x, y, "v", color=colour, markersize=3 if ablation else 7, clip_on=False)
            else:
                y = pq.mean
                ax.errorbar(
                    x,
                    y,
                    yerr=pq.std or 0.0,
                    fmt="o",
                    color=colour,
                    capsize=3,
                    markersize=3 if ablation else 6,
                    alpha=0.45 if ablation else 1.0,
                )
            if not ablation or off_scale:
                text = _row_label(row)
                if off_scale:
                    text += f": {pq.mean:.2f}, off scale"
                labels[row.row.kind == EXPLORE].append((x, y, text))
    gap = LABEL_GAP * (top - bottom)
    for left, items in labels.items():
        for group in _near_groups([x for x, _, _ in items]):
            heights = spread_labels([items[i][1] + gap / 4 for i in group], gap)
            edge = (min if left else max)(items[i][0] for i in group)
            column = edge * 10 ** (-LABEL_SHIFT if left else LABEL_SHIFT)  # clear of every point
            for i, height in zip(group, heights, strict=True):
                x, y, text = items[i]
                ax.annotate(
                    text,
                    (x, y),
                    xytext=(column, height),
                    ha="right" if left else "left",
                    va="center",
                    fontsize=8,
                    arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.5, "shrinkB": 4},
                    annotation_clip=False,
                )
    ax.set_xscale("log")
    ax.set_xlabel("cost: trained epochs per seed, search included (log)")
    ax.set_ylabel(ylabel)
    ax.set_title("PQ against cost (red: Ada-Segment, blue: baselines, green: other ablations)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


NONPOSITIVE_AT = 1e-4  # where a policy mean <= 0 is drawn on the log axis


def _positive(values: Sequence[float]) -> list[float]:
    return [v if v > 0 or math.isnan(v) else NONPOSITIVE_AT for v in values]


def plot_weights(
    results: Mapping[str, Mapping[str, Any]],
    scale: Scale,
    seeds: Sequence[int],
    path: Path,
    variant: str = "default",
) -> Path:
    """Top: the policy's mean λ per round (solid; a mean <= 0 is drawn at 1e-4) and the
    best member's λ (dashed) of one exploration variant, and for the default one PBT's
    best λ (dotted), per seed. Bottom: the λ per epoch of its dynamic transfer runs.
    Published and equal weights as horizontal lines."""
    plt = _pyplot()
    facts = model_facts(scale)
    names = list(facts.loss_names)
    explore_row = explore_row_name(variant)
    transfers = (
        (("ensemble", "o-"), ("final", "x--"))
        if variant == "default"
        else ((f"ensemble-{variant}", "o-"),)
    )
    width = 4.2 if len(names) <= 4 else 3.0
    fig, axes = plt.subplots(2, len(names), figsize=(width * len(names), 6.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        top, bottom = axes[0][i], axes[1][i]
        for k, seed in enumerate(seeds):
            colour = colours[k % len(colours)]
            explore = results.get(cell_key(scale, explore_row, seed))
            if explore:
                rounds = [r for r in explore["rounds"] if r["round"] >= 1]
                xs = [r["round"] for r in rounds]
                means = [(r["mean_weights"] or {}).get(name, math.nan) for r in rounds]
                top.plot(
                    xs, _positive(means), "o-", color=colour, label=f"policy mean, seed {seed}"
                )
                best = [
                    r["members"][r["best_member"]]["weights"][name]
                    if r["best_member"] is not None
                    else math.nan
                    for r in rounds
                ]
                top.plot(
                    xs, best, "s--", color=colour, alpha=0.6, label=f"best member, seed {seed}"
                )
            pbt = results.get(cell_key(scale, "pbt", seed)) if variant == "default" else None
            if pbt:
                rounds = [
                    r for r in pbt["rounds"] if r["round"] >= 1 and r["best_member"] is not None
                ]
                top.plot(
                    [r["round"] for r in rounds],
                    [r["members"][r["best_member"]]["weights"][name] for r in rounds],
                    ":",
                    color=colour,
                    alpha=0.8,
                    label=f"PBT best, seed {seed}",
                )
            for row, style in transfers:
                result = results.get(cell_key(scale, row, seed))
                plot_weights_history(bottom, result, name, style, colour, f"{row}, seed {seed}")
        for ax in (top, bottom):
            ax.axhline(
                facts.published[name], color="k", linestyle="--", linewidth=1, label="published"
            )
            ax.axhline(1.0, color="0.5", linestyle=":", linewidth=1, label="equal")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        top.set_title(f"'{name}': exploration, per round")
        top.set_xlabel("round")
        bottom.set_title(f"'{name}': transfer run, per epoch")
        bottom.set_xlabel("epoch")
    options = ", ".join(f"{k}={v}" for k, v in VARIANTS[variant].items()) or "paper defaults"
    fig.suptitle(f"Loss weights, exploration variant '{variant}' ({options})")
    axes[0][0].legend(fontsize=6)
    axes[1][0].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def plot_weights_history(
    ax: Any, result: Mapping[str, Any] | None, name: str, style: str, colour: str, label: str
) -> None:
    """Loss ``name``'s weight per epoch of a training run, if the result has its history."""
    if result and result.get("weights_history"):
        history = result["weights_history"]
        ax.plot(
            range(1, len(history) + 1),
            [w[name] for w in history],
            style,
            color=colour,
            label=label,
        )


def plot_static_weights(scale: Scale, phase: PhaseTable, path: Path) -> Path:
    """Per loss: the weights of the learnable rows per epoch (lines), and the fixed λ of the
    untrained policy, the neutral centre and the grids' picks (markers at the right), per
    seed, beside the published and equal weights."""
    plt = _pyplot()
    facts = model_facts(scale)
    names = list(facts.loss_names)
    columns = min(len(names), 5)  # ten losses: two rows of five
    lines_of_plots = -(-len(names) // columns)
    fig, grid = plt.subplots(
        lines_of_plots, columns, figsize=(4.4 * columns, 3.8 * lines_of_plots), squeeze=False
    )
    axes = [[ax for line in grid for ax in line]]
    for ax in axes[0][len(names) :]:
        ax.set_visible(False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    end = scale.epochs + 1
    for i, name in enumerate(names):
        ax = axes[0][i]
        for k, seed in enumerate(phase.seeds):
            colour = colours[k % len(colours)]
            for strategy, style in zip(LEARNABLE_STRATEGIES, ("-", "--"), strict=True):
                result = phase.results.get(f"{scale.name}-{strategy}-s{seed}")
                label = f"{strategy}, seed {seed}"
                plot_weights_history(ax, result, name, style, colour, label)
            pseudo = phase.results.get(f"{scale.name}-pseudo-s{seed}")
            fixed = []
            if pseudo:
                if has_grids(scale):
                    centre = neutral_centre(pseudo["initial_losses"])
                    fixed.append(("o", centre, "neutral centre"))
                fixed.append(("s", pseudo["mean_weights"], "untrained policy"))
            for row, marker in (("grid-neutral", "^"), ("grid", "v")):
                result = phase.results.get(f"{scale.name}-{row}-s{seed}")
                if result:
                    fixed.append((marker, result["weights"], f"{row} pick"))
            for j, (marker, weights, label) in enumerate(fixed):
                ax.plot(
                    end + 0.6 * j + 0.15 * k,
                    weights[name],
                    marker,
                    color=colour,
                    label=f"{label}, seed {seed}",
                )
        ax.axhline(facts.published[name], color="k", linestyle="--", linewidth=1, label="published")
        ax.axhline(1.0, color="0.5", linestyle=":", linewidth=1, label="equal")
        ax.set_yscale("log")
        ax.set_xlabel("epoch (markers right: fixed λ)")
        ax.set_title(f"'{name}'")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=5, ncol=2)
    fig.suptitle(f"Loss weights of the static and learnable rows, {phase.phase} seeds")
    fig.tight_layout()
    return _save(fig, path)

"""The benchmark's README and figures, rendered from whatever cell results exist.

Markdown is built by pure functions (table rows and results in, text out); the
two figures (PQ against cost, the learned weights against the hand-tuned ones)
are drawn with matplotlib's Agg backend. Missing cells show as pending, so the
report can be rendered at any time while the benchmark runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.effectiveness.plan import (
    EXPLORE,
    PUBLISHED,
    SERVICE_VARIANT,
    TRANSFER,
    UNTRAINED,
    VARIANTS,
    Scale,
    cell_key,
    explore_row_name,
)
from bench.effectiveness.results import Stat, TableRow, mean_std

PQ_PLOT = "pq_vs_cost.png"
WEIGHTS_PLOT = "weights.png"


def _stat(stat: Stat | None) -> str:
    return "pending" if stat is None else stat.format()


def _epochs(row: TableRow) -> str:
    if row.epochs is None:
        return "–"
    own = f"{row.epochs.mean:g}"
    search = row.search_epochs.mean if row.search_epochs else 0.0
    if not search:
        return own
    return f"{own} + {search:g} = {row.epochs.mean + search:g}"


def paired_delta(
    results: Mapping[str, Mapping[str, Any]],
    scale: Scale,
    row: str,
    baseline: str,
    seeds: Sequence[int],
) -> Stat | None:
    """PQ(row) − PQ(baseline) per seed where both are done: same seed, same initial
    model and data order, so the paired difference is the fairer comparison."""
    diffs = []
    for seed in seeds:
        a = results.get(cell_key(scale, row, seed))
        b = results.get(cell_key(scale, baseline, seed))
        if a and b and a.get("pq") is not None and b.get("pq") is not None:
            diffs.append(a["pq"] - b["pq"])
    return mean_std(diffs)


def markdown_table(
    rows: Sequence[TableRow],
    results: Mapping[str, Mapping[str, Any]],
    scale: Scale,
    seeds: Sequence[int],
) -> str:
    head = (
        "| method | paper | PQ | PQ_th | PQ_st | ΔPQ vs equal (paired) "
        "| epochs (own + search) | wall min | seeds done |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    section = None
    for row in rows:
        if row.row.section != section:
            section = row.row.section
            lines.append(f"| **{section}** | | | | | | | | |")
        delta = (
            paired_delta(results, scale, row.row.name, "equal", seeds)
            if row.row.name != "equal"
            else None
        )
        done = f"{len(row.seeds_done)}/{len(row.seeds_planned)}"
        if row.diverged:
            done += f" ({row.diverged} diverged)"
        wall = "–" if row.wall_minutes is None else f"{row.wall_minutes.mean:.1f}"
        cells = [
            f"{row.row.label} (`{row.row.name}`)",
            row.row.paper,
            _stat(row.metrics["pq"]),
            _stat(row.metrics["pq_th"]),
            _stat(row.metrics["pq_st"]),
            "–"
            if delta is None
            else f"{delta.mean:+.2f}" + (f" ± {delta.std:.2f}" if delta.std else ""),
            _epochs(row),
            wall,
            done,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _weights(weights: Mapping[str, float] | None) -> str:
    if not weights:
        return "–"
    return ", ".join(f"{weights[name]:.3g}" for name in PUBLISHED if name in weights)


def weights_table(
    results: Mapping[str, Mapping[str, Any]], scale: Scale, seeds: Sequence[int]
) -> str:
    """The controller's mean λ per round and what the transfer modes used, per seed,
    beside the hand-tuned weights (order: semantic, center, offset)."""
    lines = [
        "| seed | what | λ (semantic, center, offset) |",
        "| --- | --- | --- |",
        f"| – | published (hand-tuned) | {_weights(PUBLISHED)} |",
    ]
    for seed in seeds:
        explore = results.get(cell_key(scale, "ada-a", seed))
        if explore:
            lines.append(
                f"| {seed} | l¹ (pseudo-epoch losses) | {_weights(explore['initial_losses'])} |"
            )
            for item in explore["rounds"]:
                if item["round"] >= 1:
                    lines.append(
                        f"| {seed} | round {item['round']} policy mean λ "
                        f"| {_weights(item['mean_weights'])} |"
                    )
            lines.append(
                f"| {seed} | best member's λ (final) | {_weights(explore['best']['weights'])} |"
            )
        for mode in ("static-pred", "static-final"):
            result = results.get(cell_key(scale, mode, seed))
            if result and result.get("weights_history"):
                lines.append(
                    f"| {seed} | `{mode}` transfer λ | {_weights(result['weights_history'][0])} |"
                )
        ensemble = results.get(cell_key(scale, "ensemble", seed))
        if ensemble and ensemble.get("weights_history"):
            for epoch, weights in enumerate(ensemble["weights_history"], start=1):
                lines.append(
                    f"| {seed} | `ensemble` transfer, epoch {epoch} | {_weights(weights)} |"
                )
        grid = results.get(cell_key(scale, "grid", seed))
        if grid:
            lines.append(f"| {seed} | grid search pick | {_weights(grid['weights'])} |")
    return "\n".join(lines)


def grid_table(results: Mapping[str, Mapping[str, Any]], scale: Scale, seeds: Sequence[int]) -> str:
    done = [
        (s, results[cell_key(scale, "grid", s)])
        for s in seeds
        if cell_key(scale, "grid", s) in results
    ]
    if not done:
        return "_(pending)_"
    points = [p["weights"] for p in done[0][1]["grid"]]
    head = (
        "| λ (semantic, center, offset) | "
        + " | ".join(f"proxy-val PQ, seed {s}" for s, _ in done)
        + " |"
    )
    lines = [head, "| --- |" + " --- |" * len(done)]
    for i, weights in enumerate(points):
        cells = []
        for _, grid in done:
            pq = grid["grid"][i]["proxy_val_pq"]
            mark = " **(picked)**" if grid["grid"][i]["weights"] == grid["weights"] else ""
            cells.append(("div" if pq is None else f"{pq:.2f}") + mark)
        lines.append(f"| {_weights(weights)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def status_lines(rows: Sequence[TableRow], cells_done: int, cells_total: int) -> str:
    pending = [
        f"`{r.row.name}` (seeds {', '.join(map(str, r.pending))})" for r in rows if r.pending
    ]
    text = f"{cells_done} of {cells_total} cells done."
    if pending:
        text += " Pending rows: " + "; ".join(pending) + "."
    return text


def code_versions_note(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Which cells ran on which version of the trainer/controller code, when more than one."""
    versions: dict[str, list[str]] = {}
    for key, result in sorted(results.items()):
        versions.setdefault(result.get("code") or "unrecorded", []).append(key)
    if len(versions) <= 1:
        return ""
    parts = [f"`{code}`: {len(keys)} cells" for code, keys in versions.items()]
    return (
        "Code versions: the product's code changed while the benchmark ran, so the results "
        "come from " + ", ".join(parts) + " (per cell: the `code` field of its result file)."
    )


def render_markdown(
    *,
    scale: Scale,
    seeds: Sequence[int],
    rows: Sequence[TableRow],
    results: Mapping[str, Mapping[str, Any]],
    cells_done: int,
    cells_total: int,
    command: str,
    machine: str,
    analysis: str | None,
    variants: Sequence[str] = ("default",),
) -> str:
    s = scale
    setup = (
        f"Synthetic COCO-panoptic data (`adaseg data synth`, seed {s.data_seed}): {s.images} "
        f"train and {s.val_images} val images of {s.size}×{s.size}. Model: the default tiny "
        f"Panoptic-DeepLab (losses semantic, center, offset). Every row trains E = {s.epochs} "
        f"epochs, batch {s.batch_size}, SGD lr 0.02 with one cosine schedule, heads at lr/λ_i; "
        f"seeds {', '.join(map(str, seeds))} (the seed sets the initial model, the data order "
        f"and the proxy split; all rows of a seed start from the same initial model). "
        f"Exploration (and PBT): population m = {s.population}, T = {s.rounds} rounds plus "
        f"the pseudo epoch, i.e. {s.search_epochs} member-epochs on proxy-train "
        f"({1 - s.proxy_val:.0%} of train); members are scored on proxy-val, every number in "
        f"the table is on the held-out `val` split. Grid: semantic 1, center and offset at "
        f"the published value × {{{', '.join(f'{f:g}' for f in s.grid_factors)}}}, trained on "
        f"proxy-train, picked on proxy-val, retrained on train. PBT: the best member's λ × "
        f"exp(N(0, {s.pbt_sigma:g}²)) per loss, same population, rounds and broadcast."
    )
    parts = [
        "# Effectiveness: the paper's comparison tables at small scale",
        "",
        "_Generated by `bench/effectiveness/run.py` from `results/*.json`; the reading at the "
        "end is written by hand in `analysis.md`._",
        "",
        "## Status",
        "",
        status_lines(rows, cells_done, cells_total),
        "",
        code_versions_note(results),
        "",
        "Run or resume (done cells are skipped; Ctrl-C is safe):",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {machine}.",
        "",
        "## Setup",
        "",
        setup,
        "",
        "## Results (mean ± std over seeds, PQ in %)",
        "",
        "Cost is in trained epochs per seed: the row's own training plus the search it needs "
        "(grid points; the exploration for Ada-Segment's transfer rows, shared by all of them). "
        "Wall minutes are the same sum on a shared 2-core machine, so only roughly comparable.",
        "",
        markdown_table(rows, results, scale, seeds),
        "",
        f"![PQ against cost]({PQ_PLOT})",
        "",
        "## Weights the controller learned, next to the hand-tuned ones",
        "",
        *[f"![weights, {v}]({weights_plot_name(v)})\n" for v in variants],
        weights_table(results, scale, seeds),
        "",
        "## Grid search (Baseline-G)",
        "",
        grid_table(results, scale, seeds),
        "",
        "## Reading",
        "",
        analysis.strip() if analysis else "_(pending: written once the table is complete)_",
        "",
    ]
    return "\n".join(parts)


# -- figures ------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def plot_pq_vs_cost(rows: Sequence[TableRow], path: Path) -> Path:
    """Tables 1 and 2 labelled (Ada-Segment red, baselines blue), ablations as small
    unlabelled green points; rows of equal cost side by side, best PQ rightmost."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    points = [r for r in rows if r.metrics["pq"] is not None and r.total_epochs is not None]
    by_cost: dict[float, list[TableRow]] = {}
    for row in points:
        by_cost.setdefault(row.total_epochs, []).append(row)
    for cost, group in by_cost.items():
        group.sort(key=lambda r: r.metrics["pq"].mean)
        for k, row in enumerate(group):
            pq = row.metrics["pq"]
            x = cost * (1 + JITTER * (k - (len(group) - 1) / 2))
            ablation = row.row.section == "Ablations" and row.row.kind != UNTRAINED
            colour = "tab:green" if ablation else "tab:blue"
            if row.row.kind in (EXPLORE, TRANSFER) and not ablation:
                colour = "tab:red"
            ax.errorbar(
                x,
                pq.mean,
                yerr=pq.std or 0.0,
                fmt="o",
                color=colour,
                capsize=3,
                markersize=3 if ablation else 6,
                alpha=0.45 if ablation else 1.0,
            )
            if not ablation:
                label = row.row.name
                if row.row.variant == SERVICE_VARIANT:
                    label = label.replace(f"-{SERVICE_VARIANT}", " (service defaults)")
                left = row.row.kind == EXPLORE  # the explorations' labels left of their point
                ax.annotate(
                    label,
                    (x, pq.mean),
                    textcoords="offset points",
                    xytext=(-4 if left else 4, 3),
                    ha="right" if left else "left",
                    fontsize=8,
                )
    ax.set_xscale("log")
    ax.set_xlabel("cost: trained epochs per seed, search included (log)")
    ax.set_ylabel("PQ on val (%), mean ± std over seeds")
    ax.set_title("PQ against cost (red: Ada-Segment, blue: baselines, green: other ablations)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


NONPOSITIVE_AT = 1e-4  # where a policy mean <= 0 is drawn on the log axis


def _positive(values: Sequence[float]) -> list[float]:
    return [v if v > 0 else NONPOSITIVE_AT for v in values]


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
    names = list(PUBLISHED)
    explore_row = explore_row_name(variant)
    transfers = (
        (("ensemble", "o-"), ("final", "x--"))
        if variant == "default"
        else ((f"ensemble-{variant}", "o-"),)
    )
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        top, bottom = axes[0][i], axes[1][i]
        for k, seed in enumerate(seeds):
            colour = colours[k % len(colours)]
            explore = results.get(cell_key(scale, explore_row, seed))
            if explore:
                rounds = [r for r in explore["rounds"] if r["round"] >= 1]
                xs = [r["round"] for r in rounds]
                means = [r["mean_weights"][name] for r in rounds]
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
                if result and result.get("weights_history"):
                    history = result["weights_history"]
                    bottom.plot(
                        range(1, len(history) + 1),
                        [w[name] for w in history],
                        style,
                        color=colour,
                        label=f"{row}, seed {seed}",
                    )
        for ax in (top, bottom):
            ax.axhline(PUBLISHED[name], color="k", linestyle="--", linewidth=1, label="published")
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


def weights_plot_name(variant: str) -> str:
    return WEIGHTS_PLOT if variant == "default" else f"weights-{variant}.png"


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def render(
    out_dir: Path,
    *,
    scale: Scale,
    seeds: Sequence[int],
    rows: Sequence[TableRow],
    results: Mapping[str, Mapping[str, Any]],
    cells_done: int,
    cells_total: int,
    command: str,
    machine: str,
) -> Path:
    """Write README.md and the two PNGs into ``out_dir``; ``analysis.md`` there, if
    present, is the hand-written reading included at the end."""
    out_dir = Path(out_dir)
    analysis_path = out_dir / "analysis.md"
    analysis = analysis_path.read_text() if analysis_path.exists() else None
    plot_pq_vs_cost(rows, out_dir / PQ_PLOT)
    variants = explored_variants(results, scale, seeds)
    for variant in variants:
        plot_weights(results, scale, seeds, out_dir / weights_plot_name(variant), variant)
    text = render_markdown(
        scale=scale,
        seeds=seeds,
        rows=rows,
        results=results,
        cells_done=cells_done,
        cells_total=cells_total,
        command=command,
        machine=machine,
        analysis=analysis,
        variants=variants,
    )
    readme = out_dir / "README.md"
    readme.write_text(text)
    return readme

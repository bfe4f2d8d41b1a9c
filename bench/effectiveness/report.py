"""The small scale's README (issue 7's tables: every seed scored on ``val``), rendered from
whatever cell results exist, and the formatting the held-out report shares.

Markdown is built by pure functions (table rows and results in, text out); the figures
come from ``figures``. Missing cells show as pending, so the report can be rendered at any
time while the benchmark runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.effectiveness.figures import (
    PQ_PLOT,
    explored_variants,
    plot_pq_vs_cost,
    plot_weights,
    weights_plot_name,
)
from bench.effectiveness.plan import (
    PUBLISHED,
    Scale,
    cell_key,
)
from bench.effectiveness.results import Stat, TableRow, mean_std, paired


def format_stat(stat: Stat | None) -> str:
    return "pending" if stat is None else stat.format()


def format_epochs(row: TableRow) -> str:
    if row.epochs is None:
        return "–"
    own = f"{row.epochs.mean:g}"
    search = row.search_epochs.mean if row.search_epochs else 0.0
    if not search:
        return own
    return f"{own} + {search:g} = {row.epochs.mean + search:g}"


def format_weights(
    weights: Mapping[str, float] | None, names: Sequence[str] = tuple(PUBLISHED)
) -> str:
    if not weights:
        return "–"
    return ", ".join(f"{weights[name]:.3g}" for name in names if name in weights)


def paired_delta(
    results: Mapping[str, Mapping[str, Any]],
    scale: Scale,
    row: str,
    baseline: str,
    seeds: Sequence[int],
) -> Stat | None:
    """PQ(row) − PQ(baseline) per seed where both are done: same seed, same initial
    model and data order, so the paired difference is the fairer comparison."""
    compared = paired(results, scale, row, baseline, seeds)
    return None if compared is None else mean_std(compared.diffs)


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
            format_stat(row.metrics["pq"]),
            format_stat(row.metrics["pq_th"]),
            format_stat(row.metrics["pq_st"]),
            "–"
            if delta is None
            else f"{delta.mean:+.2f}" + (f" ± {delta.std:.2f}" if delta.std else ""),
            format_epochs(row),
            wall,
            done,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def weights_table(
    results: Mapping[str, Mapping[str, Any]], scale: Scale, seeds: Sequence[int]
) -> str:
    """The controller's mean λ per round and what the transfer modes used, per seed,
    beside the hand-tuned weights (order: semantic, center, offset)."""
    lines = ["| seed | what | λ (semantic, center, offset) |", "| --- | --- | --- |"]

    def add(seed: int | str, what: str, weights: Mapping[str, float] | None) -> None:
        lines.append(f"| {seed} | {what} | {format_weights(weights)} |")

    add("–", "published (hand-tuned)", PUBLISHED)
    for seed in seeds:
        explore = results.get(cell_key(scale, "ada-a", seed))
        if explore:
            add(seed, "l¹ (pseudo-epoch losses)", explore["initial_losses"])
            for item in explore["rounds"]:
                if item["round"] >= 1:
                    add(seed, f"round {item['round']} policy mean λ", item["mean_weights"])
            add(seed, "best member's λ (final)", explore["best"]["weights"])
        for mode in ("static-pred", "static-final"):
            result = results.get(cell_key(scale, mode, seed))
            if result and result.get("weights_history"):
                add(seed, f"`{mode}` transfer λ", result["weights_history"][0])
        ensemble = results.get(cell_key(scale, "ensemble", seed))
        if ensemble and ensemble.get("weights_history"):
            for epoch, weights in enumerate(ensemble["weights_history"], start=1):
                add(seed, f"`ensemble` transfer, epoch {epoch}", weights)
        grid = results.get(cell_key(scale, "grid", seed))
        if grid:
            add(seed, "grid search pick", grid["weights"])
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
        lines.append(f"| {format_weights(weights)} | " + " | ".join(cells) + " |")
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

"""The benchmark's README and figures, rendered from whatever cell results exist.

Markdown is built by pure functions (table rows and results in, text out); the
two figures (PQ against cost, the learned weights against the hand-tuned ones)
are drawn with matplotlib's Agg backend. Missing cells show as pending, so the
report can be rendered at any time while the benchmark runs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.effectiveness.plan import (
    DEFAULTS_VARIANT,
    DEV,
    EXPLORE,
    GRID,
    LEARNABLE_STRATEGIES,
    NEUTRAL_CENTRE,
    PLAIN_HEADS,
    PUBLISHED,
    ROWS,
    SCALED_HEADS,
    SERVICE_VARIANT,
    TEST,
    TRAIN,
    TRANSFER,
    UNTRAINED,
    VARIANTS,
    Cell,
    Scale,
    cell_key,
    default_row_names,
    explore_row_name,
    head_lr_rule,
    neutral_centre,
    plan,
    proxy_split_names,
    scale_model,
)
from bench.effectiveness.results import Stat, TableRow, mean_std, paired

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


@dataclass(frozen=True)
class ModelFacts:
    """What the report says about a scale's model: its loss names (in its order) and its
    published weights, read from the model class (the one place they are stated)."""

    name: str
    loss_names: tuple[str, ...]
    published: Mapping[str, float]


def model_facts(scale: Scale) -> ModelFacts:
    from trainer_image.models import MODELS

    name = scale_model(scale)
    cls = MODELS[name]
    return ModelFacts(name, tuple(cls.loss_names), dict(cls.published_weights))


def _weights(weights: Mapping[str, float] | None, names: Sequence[str] = tuple(PUBLISHED)) -> str:
    if not weights:
        return "–"
    return ", ".join(f"{weights[name]:.3g}" for name in names if name in weights)


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


def plot_pq_vs_cost(
    rows: Sequence[TableRow], path: Path, ylabel: str = "PQ on val (%), mean ± std over seeds"
) -> Path:
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
                if row.row.variant == DEFAULTS_VARIANT:
                    label = label.replace(f"-{DEFAULTS_VARIANT}", " (service defaults)")
                elif row.row.variant == SERVICE_VARIANT:
                    label = label.replace(f"-{SERVICE_VARIANT}", " (former defaults)")
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
                _plot_weights_history(bottom, result, name, style, colour, f"{row}, seed {seed}")
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


def _plot_weights_history(
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


# -- the held-out protocol's report (issue 12) --------------------------------------------------

HELD_OUT_NOTES = "notes.md"  # hand-written: the scale's choice, the noise measurement, adding rows
BASELINES = ("equal", "untrained")  # every row is compared with both, paired by seed


@dataclass(frozen=True)
class PhaseTable:
    """One phase's cells, table rows and current results."""

    phase: str
    seeds: Sequence[int]
    cells: Sequence[Cell]
    rows: Sequence[TableRow]
    results: Mapping[str, Mapping[str, Any]]


def pq_plot_name(phase: str) -> str:
    return f"pq_vs_cost-{phase}.png"


def static_weights_plot_name(phase: str) -> str:
    return f"weights-static-{phase}.png"


def held_out_weights_plot_name(variant: str, phase: str) -> str:
    return f"{weights_plot_name(variant).removesuffix('.png')}-{phase}.png"


def _heads(scale: Scale, row: TableRow) -> str:
    rule = head_lr_rule(scale, row.row)
    if row.row.name == "equal":
        return "either (λ = 1)"
    return rule or "–"


def held_out_table(scale: Scale, phase: PhaseTable) -> str:
    """Mean ± std over the phase's seeds, and each row paired with equal weights and with
    the untrained policy: mean difference [95 % bootstrap interval], wins–losses."""
    head = (
        "| method | heads | PQ | PQ_th | PQ_st | ΔPQ vs equal [95 % CI], W–L "
        "| ΔPQ vs untrained [95 % CI], W–L | epochs per seed (own + search) | wall min "
        "| seeds done |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    section = None
    for row in phase.rows:
        if row.row.section != section:
            section = row.row.section
            lines.append(f"| **{section}** | | | | | | | | | |")
        deltas = []
        for baseline in BASELINES:
            compared = (
                None
                if row.row.name == baseline
                else paired(phase.results, scale, row.row.name, baseline, phase.seeds)
            )
            deltas.append("–" if compared is None else compared.format())
        done = f"{len(row.seeds_done)}/{len(row.seeds_planned)}"
        if row.diverged:
            done += f" ({row.diverged} diverged)"
        wall = "–" if row.wall_minutes is None else f"{row.wall_minutes.mean:.1f}"
        cells = [
            f"{row.row.label} (`{row.row.name}`)",
            _heads(scale, row),
            _stat(row.metrics["pq"]),
            _stat(row.metrics["pq_th"]),
            _stat(row.metrics["pq_st"]),
            *deltas,
            _epochs(row),
            wall,
            done,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def planned_epochs(scale: Scale, row: str) -> int:
    """Epochs one seed of ``row`` trains, everything it needs included (an exploration
    counts in full for each row that needs it; a pseudo epoch once)."""
    seed = (scale.dev_seeds or scale.test_seeds or scale.seeds)[0]
    return sum(cell.planned_epochs for cell in plan(scale, [row], [seed]))


def seconds_per_epoch(results: Sequence[Mapping[str, Any]]) -> float | None:
    """Median wall seconds per trained epoch of the finished static trainings (their final
    evaluation included), the unit the cost table is priced in."""
    rates = [
        r["wall_seconds"] / r["epochs"]
        for r in results
        if r.get("kind") == TRAIN and r.get("wall_seconds") and r.get("epochs")
    ]
    return statistics.median(rates) if rates else None


def cost_table(scale: Scale, rows: Sequence[str], per_epoch: float | None) -> str:
    """Per row: epochs per seed and, at the measured rate, core-hours for one seed and for
    every dev and test seed; then the whole table, each shared cell counted once."""
    seeds = len(scale.dev_seeds) + len(scale.test_seeds)

    def hours(epochs: float) -> str:
        return "–" if per_epoch is None else f"{epochs * per_epoch / 3600:.1f}"

    lines = [
        f"| row | epochs per seed | core-h per seed | core-h, {seeds} seeds |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        epochs = planned_epochs(scale, row)
        lines.append(f"| `{row}` | {epochs} | {hours(epochs)} | {hours(epochs * seeds)} |")
    every = list(scale.dev_seeds) + list(scale.test_seeds)
    total = sum(cell.planned_epochs for cell in plan(scale, rows, every))
    lines.append(
        f"| **all rows** (shared cells once) | {total / seeds:g} | {hours(total / seeds)} "
        f"| **{hours(total)}** |"
    )
    return "\n".join(lines)


def _has_grids(scale: Scale) -> bool:
    return any(ROWS[name].kind == GRID for name in default_row_names(scale))


def static_weights_table(scale: Scale, phase: PhaseTable) -> str:
    """Per seed: l¹ and every weight a static row trained with (in the model's loss
    order), beside the published ones; learnable rows at their last epoch."""
    facts = model_facts(scale)

    def _lambda(weights: Mapping[str, float] | None) -> str:
        return _weights(weights, facts.loss_names)

    lines = [
        f"| seed | what | λ ({', '.join(facts.loss_names)}) |",
        "| --- | --- | --- |",
        f"| – | published (hand-tuned) | {_lambda(facts.published)} |",
    ]
    for seed in phase.seeds:
        pseudo = phase.results.get(f"{scale.name}-pseudo-s{seed}")
        if pseudo:
            lines.append(
                f"| {seed} | l¹ (pseudo-epoch losses) | {_lambda(pseudo['initial_losses'])} |"
            )
            if _has_grids(scale):
                centre = neutral_centre(pseudo["initial_losses"])
                lines.append(f"| {seed} | neutral centre, l¹_semantic / l¹_i | {_lambda(centre)} |")
            lines.append(
                f"| {seed} | untrained policy, π⁰(l¹)/l¹ | {_lambda(pseudo['mean_weights'])} |"
            )
        for name, what in (
            ("grid-neutral", "neutral grid's pick"),
            ("grid", "published grid's pick"),
        ):
            result = phase.results.get(f"{scale.name}-{name}-s{seed}")
            if result:
                lines.append(f"| {seed} | {what} | {_lambda(result['weights'])} |")
        for strategy in LEARNABLE_STRATEGIES:
            result = phase.results.get(f"{scale.name}-{strategy}-s{seed}")
            if result and result.get("weights_history"):
                history = result["weights_history"]
                lines.append(
                    f"| {seed} | {strategy}, epoch 1 → {len(history)} "
                    f"| {_lambda(history[0])} → {_lambda(history[-1])} |"
                )
    return "\n".join(lines)


def held_out_grid_table(scale: Scale, phase: PhaseTable, row: str) -> str:
    """Proxy-val PQ of every grid point per seed, the pick marked (a neutral grid's points
    differ per seed: its centre is each seed's l¹, so they are named by their factors)."""
    done = [
        (seed, phase.results[f"{scale.name}-{row}-s{seed}"])
        for seed in phase.seeds
        if f"{scale.name}-{row}-s{seed}" in phase.results
    ]
    if not done:
        return "_(pending)_"
    neutral = done[0][1]["config"]["params"].get("centre") == NEUTRAL_CENTRE
    others = [name for name in PUBLISHED if name != "semantic"]
    heading = (
        "factors on the centre (center, offset)" if neutral else "λ (semantic, center, offset)"
    )
    lines = [
        f"| {heading} | " + " | ".join(f"seed {s}" for s, _ in done) + " |",
        "| --- |" + " --- |" * len(done),
    ]
    for i, point in enumerate(done[0][1]["grid"]):
        if neutral:
            centre = neutral_centre(
                phase.results[f"{scale.name}-pseudo-s{done[0][0]}"]["initial_losses"]
            )
            label = ", ".join(f"×{point['weights'][n] / centre[n]:.3g}" for n in others)
        else:
            label = _weights(point["weights"])
        cells = []
        for _, result in done:
            entry = result["grid"][i]
            mark = " **(picked)**" if entry["weights"] == result["weights"] else ""
            pq = entry["proxy_val_pq"]
            cells.append(("div" if pq is None else f"{pq:.2f}") + mark)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
                _plot_weights_history(ax, result, name, style, colour, label)
            pseudo = phase.results.get(f"{scale.name}-pseudo-s{seed}")
            fixed = []
            if pseudo:
                if _has_grids(scale):
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


def _phase_status(phase: PhaseTable) -> str:
    text = f"{len(phase.results)} of {len(phase.cells)} cells done"
    pending = [f"`{r.row.name}`" for r in phase.rows if r.pending and r.seeds_done]
    waiting = [f"`{r.row.name}`" for r in phase.rows if not r.seeds_done]
    if pending:
        text += "; partly done: " + ", ".join(pending)
    if waiting:
        text += "; not started: " + ", ".join(waiting)
    return text + "."


def held_out_markdown(
    *,
    scale: Scale,
    phases: Mapping[str, PhaseTable],
    frozen: Any,
    machine: str,
    per_epoch: float | None,
    notes: str | None,
    analysis: str | None,
    plots: Mapping[str, Sequence[str]],
) -> str:
    """The README of a held-out scale (pure)."""
    s = scale
    dev, test = phases[DEV], phases[TEST]
    proxy_train, proxy_val = proxy_split_names(0)
    proxy = f"{s.proxy_val} images" if isinstance(s.proxy_val, int) else f"{s.proxy_val:.0%}"
    document = getattr(frozen, "document", None)
    if document and getattr(frozen, "commit", None) and frozen.clean:
        frozen_line = (
            f"Settings frozen in commit `{frozen.commit[:10]}` (`frozen/{s.name}.json`, "
            f"{document.get('frozen_at')}): rows {', '.join(f'`{r}`' for r in document['rows'])}."
        )
    elif document:
        frozen_line = f"`frozen/{s.name}.json` is written but not committed: no test cell may run."
    else:
        frozen_line = "Settings not frozen yet: no test cell has run."
    rows = [r.row.name for r in dev.rows]
    lr = 0.02 if s.lr is None else s.lr
    facts = model_facts(s)
    model = (
        "the default tiny Panoptic-DeepLab"
        if s.model is None
        else f"`{facts.name}` at its tiny preset, {len(facts.loss_names)} losses"
    )
    setup = (
        f"Synthetic COCO-panoptic data (`adaseg data synth`, seed {s.data_seed}): {s.images} "
        f"train and {s.val_images} val images of {s.size}×{s.size}. Model: {model} "
        f"(losses {', '.join(facts.loss_names)}). Every row trains E = {s.epochs} "
        f"epochs, batch {s.batch_size}, SGD lr {lr:g} (momentum 0.9, weight decay 1e-4, "
        f"gradient clip 10) on one cosine schedule. Exploration (and PBT): population "
        f"m = {s.population}, T = {s.rounds} rounds of one epoch after the pseudo epoch, "
        f"i.e. {s.search_epochs} member-epochs per seed, members scored on proxy-val "
        f"({proxy} of train)."
    )
    grids = (
        "`grid-neutral` knows nothing of the published weights: semantic at 1, center "
        "and offset at l¹_semantic / l¹_i (the equal-loss normalisation of the seed's pseudo "
        f"epoch) × {{{', '.join(f'{f:g}' for f in s.grid_factors)}}}. `grid` is issue 7's "
        "grid around the published weights (prior knowledge no new model has), kept as a "
        "labelled row. Both pick on proxy-val; the pick's own model is the row's model."
        if _has_grids(s)
        else f"None: with {len(facts.loss_names)} losses even three points per loss would "
        f"be 3^{len(facts.loss_names) - 1} trainings, which is the case the method is for."
    )
    plain = (
        ", so `published-plain` and `untrained-plain` give the static rows under that rule too"
        if "published-plain" in rows
        else " (this scale has no rows of static weights under that rule)"
    )
    protocol = f"""\
- **Seeds.** Dev seeds {", ".join(map(str, s.dev_seeds))}; test seeds \
{", ".join(map(str, s.test_seeds))}, used by no earlier run. A seed sets the initial model, \
the data order and the proxy split; every row of a seed starts from the same initial model.
- **Images.** Every row trains on the seed's proxy-train split (`{proxy_train}`: train \
without its proxy-val, {proxy}), static rows included: the images the exploration's members \
train on.
- **Scores.** Dev seeds are scored on the seed's proxy-val (`{proxy_val}`); these are the only \
numbers any setting may be chosen on. Rows that also pick on proxy-val (the grids' picks, \
Ada-Segment-A's and PBT's best member) are scored where they picked, so their dev numbers \
are optimistic. Test seeds are scored on `val`, which no choice has seen; they give the \
table, once.
- **Freeze.** `run.py --freeze ROW...` writes a hash of each row's settings (everything its \
cells and the cells they need run with, apart from the seed) to `frozen/{s.name}.json`; the \
file is committed; `run.py --phase test` refuses rows not frozen, rows whose settings hash \
changed since, and a frozen file with uncommitted changes; `--freeze` refuses rows that have \
test results. Every test result records the freeze commit. {frozen_line}
- **Head learning rates.** Column "heads": `{SCALED_HEADS}` trains loss i's head at lr/λ_i \
(the paper's rule), `{PLAIN_HEADS}` at lr. Equal weights are the same under both. \
Uncertainty weighting and GradNorm move their weights every step and the trainer trains \
their heads at lr only{plain}.
- **Grids.** {grids}
- **Statistics.** Mean ± sample std over seeds; each row minus equal weights and minus the \
untrained policy, paired by seed: mean [95 % percentile bootstrap interval over seeds, \
exact], wins–losses. With 3 or 5 seeds the interval cannot reach past the smallest or \
largest difference: it is narrow, not conservative."""
    parts = [
        f"# Effectiveness at {s.name} scale, on a held-out protocol",
        "",
        "_Generated by `bench/effectiveness/run.py` from `results/*.json`; written by hand: "
        f"`{HELD_OUT_NOTES}` (the scale, the noise, adding rows) and `analysis.md` (the reading)._",
        "",
        *(
            [
                "Issue 7's small-scale tables (64×64, 6 epochs: the models barely learn there; "
                "all seeds scored on `val`): [small/README.md](small/README.md).",
                "",
            ]
            if s.model is None
            else []
        ),
        "## Status",
        "",
        f"- Dev seeds: {_phase_status(dev)}",
        f"- {frozen_line}",
        f"- Test seeds: {_phase_status(test)}",
        "",
        "```",
        f".venv/bin/python bench/effectiveness/run.py --scale {s.name} --phase dev   # resumable",
        f".venv/bin/python bench/effectiveness/run.py --scale {s.name} --freeze ROW...",
        f"git add bench/effectiveness/frozen/{s.name}.json && git commit",
        f".venv/bin/python bench/effectiveness/run.py --scale {s.name} --phase test --rows ROW...",
        "```",
        "",
        f"Machine: {machine}.",
        "",
        "## Protocol",
        "",
        protocol,
        "",
        "## Setup and cost",
        "",
        setup,
        "",
        "Cost: epochs one seed trains for the row, everything it needs included (the "
        "exploration of each transfer row, the pseudo epoch, every grid point), priced at "
        + (
            "the measured median of the static trainings here, "
            f"{per_epoch:.1f} s per epoch on one core"
            if per_epoch
            else "the static trainings' rate (none measured yet)"
        )
        + ". An exploration's epoch also scores its member on proxy-val, so its rows cost a "
        "little more. The whole table is for one process per core on 2 cores: half the "
        "core-hours in wall time when nothing else runs.",
        "",
        cost_table(s, rows, per_epoch),
        "",
        notes.strip() if notes else "",
        "",
        f"## Test table: seeds {', '.join(map(str, test.seeds))} on `val`",
        "",
        held_out_table(s, test) if test.results else "_(not run: settings not frozen yet)_",
        "",
        *[f"![{name}]({name})\n" for name in plots.get(TEST, ())],
        f"## Dev table: seeds {', '.join(map(str, dev.seeds))} on proxy-val",
        "",
        "Numbers to choose settings on, never to quote as the result.",
        "",
        held_out_table(s, dev),
        "",
        *[f"![{name}]({name})\n" for name in plots.get(DEV, ())],
        "### Weights of the static rows (dev seeds)",
        "",
        static_weights_table(s, dev),
        "",
        *(
            [
                "### Grid searches (dev seeds, proxy-val PQ)",
                "",
                "Neutral grid (`grid-neutral`):",
                "",
                held_out_grid_table(s, dev, "grid-neutral"),
                "",
                "Published-centred grid (`grid`):",
                "",
                held_out_grid_table(s, dev, "grid"),
                "",
            ]
            if _has_grids(s)
            else []
        ),
        "## Reading",
        "",
        analysis.strip() if analysis else "_(pending)_",
        "",
    ]
    return "\n".join(parts)


def render_held_out(
    out_dir: Path,
    *,
    scale: Scale,
    phases: Mapping[str, PhaseTable],
    frozen: Any,
    machine: str,
) -> Path:
    """Write a held-out scale's README.md and figures into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {}
    for name in (HELD_OUT_NOTES, "analysis.md"):
        path = out_dir / name
        texts[name] = path.read_text() if path.exists() else None
    every = [r for phase in phases.values() for r in phase.results.values()]
    plots: dict[str, list[str]] = {}
    for name, phase in phases.items():
        if not phase.results:
            continue
        names = [pq_plot_name(name), static_weights_plot_name(name)]
        plot_pq_vs_cost(phase.rows, out_dir / names[0], ylabel=_ylabel(name))
        plot_static_weights(scale, phase, out_dir / names[1])
        for variant in explored_variants(phase.results, scale, phase.seeds):
            if any(
                f"{scale.name}-{explore_row_name(variant)}-s{s}" in phase.results
                for s in phase.seeds
            ):
                names.append(held_out_weights_plot_name(variant, name))
                plot_weights(phase.results, scale, phase.seeds, out_dir / names[-1], variant)
        plots[name] = names
    text = held_out_markdown(
        scale=scale,
        phases=phases,
        frozen=frozen,
        machine=machine,
        per_epoch=seconds_per_epoch(every),
        notes=texts[HELD_OUT_NOTES],
        analysis=texts["analysis.md"],
        plots=plots,
    )
    readme = out_dir / "README.md"
    readme.write_text(text)
    return readme


def _ylabel(phase: str) -> str:
    split = "proxy-val" if phase == DEV else "val"
    return f"PQ on {split} (%), mean ± std over {phase} seeds"

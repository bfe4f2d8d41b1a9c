"""The README of a held-out scale (issue 12's protocol: dev seeds, a committed freeze, then
test seeds): the test and dev tables with paired differences against equal weights and the
untrained policy, the cost table, the weights of the static rows, the grids' points. Markdown
is built by pure functions; ``render_held_out`` writes it beside its figures (``figures``)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.effectiveness.figures import (
    explored_variants,
    held_out_weights_plot_name,
    plot_pq_vs_cost,
    plot_static_weights,
    plot_weights,
    pq_plot_name,
    static_weights_plot_name,
)
from bench.effectiveness.plan import (
    DEV,
    GRID_REFERENCE,
    LEARNABLE_STRATEGIES,
    NEUTRAL_CENTRE,
    PLAIN_HEADS,
    PUBLISHED,
    SCALED_HEADS,
    TEST,
    TRAIN,
    Cell,
    Scale,
    explore_row_name,
    has_grids,
    head_lr_rule,
    model_facts,
    neutral_centre,
    plan,
    proxy_split_names,
)
from bench.effectiveness.report import format_epochs, format_stat, format_weights
from bench.effectiveness.results import TableRow, paired

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
            format_stat(row.metrics["pq"]),
            format_stat(row.metrics["pq_th"]),
            format_stat(row.metrics["pq_st"]),
            *deltas,
            format_epochs(row),
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


def static_weights_table(scale: Scale, phase: PhaseTable) -> str:
    """Per seed: l¹ and every weight a static row trained with (in the model's loss
    order), beside the published ones; learnable rows at their last epoch."""
    facts = model_facts(scale)

    def _lambda(weights: Mapping[str, float] | None) -> str:
        return format_weights(weights, facts.loss_names)

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
            if has_grids(scale):
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
    others = [name for name in PUBLISHED if name != GRID_REFERENCE]
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
            label = format_weights(point["weights"])
        cells = []
        for _, result in done:
            entry = result["grid"][i]
            mark = " **(picked)**" if entry["weights"] == result["weights"] else ""
            pq = entry["proxy_val_pq"]
            cells.append(("div" if pq is None else f"{pq:.2f}") + mark)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _phase_status(phase: PhaseTable) -> str:
    text = f"{len(phase.results)} of {len(phase.cells)} cells done"
    pending = [f"`{r.row.name}`" for r in phase.rows if r.pending and r.seeds_done]
    waiting = [f"`{r.row.name}`" for r in phase.rows if not r.seeds_done]
    if pending:
        text += "; partly done: " + ", ".join(pending)
    if waiting:
        text += "; not started: " + ", ".join(waiting)
    return text + "."


def _frozen_line(s: Scale, frozen: Any) -> str:
    """Where the settings were frozen, or why no test cell may run yet."""
    document = getattr(frozen, "document", None)
    if document and getattr(frozen, "commit", None) and frozen.clean:
        return (
            f"Settings frozen in commit `{frozen.commit[:10]}` (`frozen/{s.name}.json`, "
            f"{document.get('frozen_at')}): rows {', '.join(f'`{r}`' for r in document['rows'])}."
        )
    if document:
        return f"`frozen/{s.name}.json` is written but not committed: no test cell may run."
    return "Settings not frozen yet: no test cell has run."


def _proxy_size(s: Scale) -> str:
    return f"{s.proxy_val} images" if isinstance(s.proxy_val, int) else f"{s.proxy_val:.0%}"


def _setup(s: Scale) -> str:
    """The data, model, schedule and search sizes every row shares."""
    lr = 0.02 if s.lr is None else s.lr
    facts = model_facts(s)
    model = (
        "the default tiny Panoptic-DeepLab"
        if s.model is None
        else f"`{facts.name}` at its tiny preset, {len(facts.loss_names)} losses"
    )
    return (
        f"Synthetic COCO-panoptic data (`adaseg data synth`, seed {s.data_seed}): {s.images} "
        f"train and {s.val_images} val images of {s.size}×{s.size}. Model: {model} "
        f"(losses {', '.join(facts.loss_names)}). Every row trains E = {s.epochs} "
        f"epochs, batch {s.batch_size}, SGD lr {lr:g} (momentum 0.9, weight decay 1e-4, "
        f"gradient clip 10) on one cosine schedule. Exploration (and PBT): population "
        f"m = {s.population}, T = {s.rounds} rounds of one epoch after the pseudo epoch, "
        f"i.e. {s.search_epochs} member-epochs per seed, members scored on proxy-val "
        f"({_proxy_size(s)} of train)."
    )


def _protocol(s: Scale, rows: Sequence[str], frozen_line: str) -> str:
    """Seeds, images, scores, freeze, head rule, grids and statistics, as a bullet list."""
    proxy_train, proxy_val = proxy_split_names(0)
    proxy = _proxy_size(s)
    n_losses = len(model_facts(s).loss_names)
    grids = (
        "`grid-neutral` knows nothing of the published weights: semantic at 1, center "
        "and offset at l¹_semantic / l¹_i (the equal-loss normalisation of the seed's pseudo "
        f"epoch) × {{{', '.join(f'{f:g}' for f in s.grid_factors)}}}. `grid` is issue 7's "
        "grid around the published weights (prior knowledge no new model has), kept as a "
        "labelled row. Both pick on proxy-val; the pick's own model is the row's model."
        if has_grids(s)
        else f"None: with {n_losses} losses even three points per loss would "
        f"be 3^{n_losses - 1} trainings, which is the case the method is for."
    )
    plain = (
        ", so `published-plain` and `untrained-plain` give the static rows under that rule too"
        if "published-plain" in rows
        else " (this scale has no rows of static weights under that rule)"
    )
    return f"""\
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


def _cost_paragraph(per_epoch: float | None) -> str:
    rate = (
        f"the measured median of the static trainings here, {per_epoch:.1f} s per epoch on one core"
        if per_epoch
        else "the static trainings' rate (none measured yet)"
    )
    return (
        "Cost: epochs one seed trains for the row, everything it needs included (the "
        f"exploration of each transfer row, the pseudo epoch, every grid point), priced at {rate}"
        ". An exploration's epoch also scores its member on proxy-val, so its rows cost a "
        "little more. The whole table is for one process per core on 2 cores: half the "
        "core-hours in wall time when nothing else runs."
    )


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
    frozen_line = _frozen_line(s, frozen)
    rows = [r.row.name for r in dev.rows]
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
        _protocol(s, rows, frozen_line),
        "",
        "## Setup and cost",
        "",
        _setup(s),
        "",
        _cost_paragraph(per_epoch),
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
        *(
            ["### Weights of the static rows (test seeds)", "", static_weights_table(s, test), ""]
            if test.results
            else []
        ),
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
            if has_grids(s)
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

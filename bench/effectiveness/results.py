"""Per-cell result files and the table aggregated from them.

A cell's result is one small JSON file, ``results/<cell-key>.json``, written
atomically when the cell is done; its ``config_hash`` says which configuration
produced it, so a cached result of another configuration counts as missing.
The aggregation is pure: results in, table rows out.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.effectiveness.plan import ROWS, Cell, Row, Scale, cell_spec, plan, spec_hash

RESULT_FORMAT = "adaseg-effectiveness-cell/v1"
METRICS = ("pq", "pq_th", "pq_st")


def result_path(results_dir: Path, key: str) -> Path:
    return Path(results_dir) / f"{key}.json"


def write_result(results_dir: Path, result: Mapping[str, Any]) -> Path:
    """Write ``result`` as ``<key>.json`` atomically (temp file + rename): an interrupted
    write leaves the old file or none, never half a file that would count as done."""
    path = result_path(results_dir, result["key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"format": RESULT_FORMAT, **result}, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_result(results_dir: Path, key: str, expected_hash: str) -> dict[str, Any] | None:
    """The cached result of ``key`` if it exists and was made by the configuration
    ``expected_hash``; None otherwise (missing, unreadable or stale)."""
    path = result_path(results_dir, key)
    try:
        result = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT:
        return None
    return result if result.get("config_hash") == expected_hash else None


def new_result(scale: Scale, cell: Cell, **fields: Any) -> dict[str, Any]:
    """The common head of every cell's result; ``fields`` holds what the cell measured."""
    spec = cell_spec(scale, cell)
    return {
        "key": cell.key,
        "kind": cell.kind,
        "row": cell.row,
        "seed": cell.seed,
        "scale": scale.name,
        "config": spec,
        "config_hash": spec_hash(spec),
        **fields,
    }


def done_results(results_dir: Path, scale: Scale, cells: Iterable[Cell]) -> dict[str, dict]:
    """The cached, current results of ``cells``, by key."""
    found = {}
    for cell in cells:
        result = read_result(results_dir, cell.key, spec_hash(cell_spec(scale, cell)))
        if result is not None:
            found[cell.key] = result
    return found


# -- aggregation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof 1; None with one value) over seeds."""

    mean: float
    std: float | None
    n: int

    def format(self, digits: int = 2) -> str:
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def mean_std(values: Iterable[float | None]) -> Stat | None:
    """Stat of the finite values; None when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None
    std = statistics.stdev(finite) if len(finite) > 1 else None
    return Stat(statistics.fmean(finite), std, len(finite))


@dataclass(frozen=True)
class TableRow:
    row: Row
    seeds_done: tuple[int, ...]
    seeds_planned: tuple[int, ...]
    metrics: Mapping[str, Stat | None]  # pq, pq_th, pq_st
    epochs: Stat | None  # trained by the row itself, per seed
    search_epochs: Stat | None  # trained before it: grid points, the exploration
    wall_minutes: Stat | None  # the row's own wall time plus its search's, per seed
    diverged: int  # seeds whose training diverged (no PQ)

    @property
    def pending(self) -> tuple[int, ...]:
        return tuple(s for s in self.seeds_planned if s not in self.seeds_done)

    @property
    def total_epochs(self) -> float | None:
        if self.epochs is None:
            return None
        return self.epochs.mean + (self.search_epochs.mean if self.search_epochs else 0.0)


def table(
    scale: Scale,
    row_names: Sequence[str],
    seeds: Sequence[int],
    results: Mapping[str, Mapping[str, Any]],
) -> list[TableRow]:
    """One row per planned row (those asked for and the explorations their transfer rows
    need), in table order, aggregated over the seeds whose current result is in
    ``results``; the rest are listed as pending."""
    cells = {c.key: c for c in plan(scale, row_names, seeds) if c.row is not None}
    by_row: dict[str, list[Mapping[str, Any]]] = {}
    for key, cell in cells.items():
        result = results.get(key)
        if result is not None and result.get("config_hash") == spec_hash(cell_spec(scale, cell)):
            by_row.setdefault(cell.row, []).append(result)
    planned = {cell.row for cell in cells.values()}  # the rows asked for and those they need
    rows = []
    for name in ROWS:
        if name not in planned:
            continue
        done = sorted(by_row.get(name, []), key=lambda r: r["seed"])
        rows.append(
            TableRow(
                row=ROWS[name],
                seeds_done=tuple(r["seed"] for r in done),
                seeds_planned=tuple(dict.fromkeys(seeds)),
                metrics={m: mean_std(r.get(m) for r in done) for m in METRICS},
                epochs=mean_std(r.get("epochs") for r in done),
                search_epochs=mean_std(r.get("search_epochs", 0) for r in done),
                wall_minutes=mean_std(
                    (r.get("wall_seconds", 0.0) + r.get("search_wall_seconds", 0.0)) / 60.0
                    for r in done
                ),
                diverged=sum(1 for r in done if r.get("pq") is None),
            )
        )
    return rows


def load_all(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Every readable result file in ``results_dir``, by key (current or not)."""
    found = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict) and result.get("format") == RESULT_FORMAT:
            found[result["key"]] = result
    return found

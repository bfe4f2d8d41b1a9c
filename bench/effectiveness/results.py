"""Per-cell result files and the table aggregated from them.

A cell's result is one small JSON file, ``results/<cell-key>.json``, written
atomically when the cell is done; its ``config_hash`` says which configuration
produced it, so a cached result of another configuration counts as missing.
The aggregation is pure: results in, table rows out.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.effectiveness.plan import (
    ROWS,
    Cell,
    Row,
    Scale,
    cell_key,
    cell_spec,
    plan,
    spec_hash,
)

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


# -- paired comparisons over seeds --------------------------------------------------------------

EXACT_BOOTSTRAP_MAX_N = 8  # C(2n-1, n) distinct resamples: 6,435 at n = 8
MONTE_CARLO_RESAMPLES = 20_000


def bootstrap_distribution(values: Sequence[float]) -> list[tuple[float, float]]:
    """The bootstrap distribution of the mean of ``values``, exact: (mean, probability) per
    distinct mean, ascending. A resample of n values drawn with replacement is a multiset
    of indices; its probability is the multinomial n! / (k_1! ... k_n!) / n^n of its counts."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    total = n**n
    merged: dict[float, float] = {}
    for picks in itertools.combinations_with_replacement(range(n), n):
        ways = math.factorial(n)
        for count in Counter(picks).values():
            ways //= math.factorial(count)
        mean = round(math.fsum(values[i] for i in picks) / n, 12)
        merged[mean] = merged.get(mean, 0.0) + ways / total
    return sorted(merged.items())


def bootstrap_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds: the (1-level)/2 and
    (1+level)/2 quantiles of the resampled means, each the smallest mean whose cumulative
    probability reaches it (the inverted-CDF quantile). Exact up to EXACT_BOOTSTRAP_MAX_N
    values, else from MONTE_CARLO_RESAMPLES seeded resamples. With few seeds it cannot
    reach past the smallest or largest value, so it is narrow, not conservative."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = [float(v) for v in values]
    if len(values) <= EXACT_BOOTSTRAP_MAX_N:
        distribution = bootstrap_distribution(values)
    else:
        import numpy as np

        rng = np.random.default_rng(0)
        picks = rng.integers(0, len(values), size=(MONTE_CARLO_RESAMPLES, len(values)))
        means = np.asarray(values)[picks].mean(axis=1)
        distribution = sorted((float(m), 1.0 / MONTE_CARLO_RESAMPLES) for m in means)
    return _quantile(distribution, (1 - level) / 2), _quantile(distribution, (1 + level) / 2)


def _quantile(distribution: Sequence[tuple[float, float]], q: float) -> float:
    cumulative = 0.0
    for value, probability in distribution:
        cumulative += probability
        if cumulative >= q - 1e-12:  # sums of probabilities carry rounding error
            return value
    return distribution[-1][0]


@dataclass(frozen=True)
class Paired:
    """PQ(row) − PQ(baseline) over the seeds where both are done (same seed: same initial
    model, data order and splits), with a 95 % bootstrap interval and the wins per seed."""

    diffs: tuple[float, ...]
    seeds: tuple[int, ...]
    interval: tuple[float, float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs)

    @property
    def wins(self) -> int:
        return sum(1 for d in self.diffs if d > 0)

    @property
    def losses(self) -> int:
        return sum(1 for d in self.diffs if d < 0)

    def format(self) -> str:
        low, high = self.interval
        return f"{self.mean:+.2f} [{low:+.2f}, {high:+.2f}], {self.wins}–{self.losses}"


def paired(
    results: Mapping[str, Mapping[str, Any]],
    scale: Scale,
    row: str,
    baseline: str,
    seeds: Sequence[int],
    metric: str = "pq",
) -> Paired | None:
    """The paired comparison of ``row`` against ``baseline``; None without a common seed."""
    diffs, done = [], []
    for seed in seeds:
        a = results.get(cell_key(scale, row, seed))
        b = results.get(cell_key(scale, baseline, seed))
        if a and b and a.get(metric) is not None and b.get(metric) is not None:
            diffs.append(float(a[metric]) - float(b[metric]))
            done.append(seed)
    if not diffs:
        return None
    return Paired(tuple(diffs), tuple(done), bootstrap_interval(diffs))


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

"""The effectiveness benchmark's harness: cell keys, caching and resume, scheduling, the
table and the PBT baseline's pure logic. No training here: the benchmark itself is the
end-to-end run (``bench/effectiveness/run.py --scale smoke``)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.effectiveness import pbt
from bench.effectiveness.plan import (
    EXPLORE,
    GRID,
    GRID_POINT,
    SCALES,
    TRANSFER,
    UNTRAINED,
    Cell,
    cell_spec,
    grid_weights,
    plan,
    spec_hash,
)
from bench.effectiveness.report import markdown_table, paired_delta
from bench.effectiveness.results import (
    done_results,
    mean_std,
    new_result,
    read_result,
    result_path,
    table,
    write_result,
)
from bench.effectiveness.run import Paths, eta_seconds, next_cells, run_all
from pipelines.local import ChildProcesses, stop_signals_as_interrupt

SMOKE = SCALES["smoke"]  # grid factors (0.1, 10): a 2 × 2 grid


# -- plan -------------------------------------------------------------------------------------


def test_grid_is_published_times_factors_with_semantic_fixed() -> None:
    assert grid_weights(SMOKE) == [
        {"semantic": 1.0, "center": 20.0, "offset": 0.001},
        {"semantic": 1.0, "center": 20.0, "offset": 0.1},
        {"semantic": 1.0, "center": 2000.0, "offset": 0.001},
        {"semantic": 1.0, "center": 2000.0, "offset": 0.1},
    ]


def test_plan_keys_dependencies_and_order() -> None:
    cells = plan(SMOKE, ["grid", "ensemble", "equal"], [0, 1])
    keys = [c.key for c in cells]
    # per seed: the exploration first (pulled in by the transfer row), then table order
    assert keys[:7] == [
        "smoke-ada-a-s0",
        "smoke-equal-s0",
        "smoke-grid-center20-offset0.001-s0",
        "smoke-grid-center20-offset0.1-s0",
        "smoke-grid-center2000-offset0.001-s0",
        "smoke-grid-center2000-offset0.1-s0",
        "smoke-grid-s0",
    ]
    assert keys[7] == "smoke-ensemble-s0"
    assert keys[8:] == [k.replace("-s0", "-s1") for k in keys[:8]]
    by_key = {c.key: c for c in cells}
    assert by_key["smoke-ensemble-s1"].deps == ("smoke-ada-a-s1",)
    assert by_key["smoke-ensemble-s1"].kind == TRANSFER
    assert by_key["smoke-ada-a-s0"].kind == EXPLORE
    assert by_key["smoke-ada-a-s0"].slots == SMOKE.workers
    assert by_key["smoke-ada-a-s0"].planned_epochs == 1 + SMOKE.population * SMOKE.rounds
    assert by_key["smoke-grid-s0"].kind == GRID
    assert by_key["smoke-grid-s0"].deps == tuple(keys[2:6])
    assert by_key["smoke-grid-center20-offset0.1-s0"].kind == GRID_POINT
    assert by_key["smoke-grid-center20-offset0.1-s0"].row is None


def test_the_untrained_policy_row_waits_for_its_exploration() -> None:
    cells = plan(SMOKE, ["untrained"], [0])
    assert [c.key for c in cells] == ["smoke-ada-a-s0", "smoke-untrained-s0"]
    untrained = cells[1]
    assert (untrained.kind, untrained.deps, untrained.slots) == (UNTRAINED, ("smoke-ada-a-s0",), 1)
    assert untrained.planned_epochs == SMOKE.epochs


def test_plan_rejects_unknown_rows_and_no_seeds() -> None:
    with pytest.raises(ValueError, match="unknown rows \\['nope'\\]"):
        plan(SMOKE, ["equal", "nope"], [0])
    with pytest.raises(ValueError, match="seed"):
        plan(SMOKE, ["equal"], [])


def test_hash_follows_the_configuration_not_the_parallelism() -> None:
    cell = plan(SMOKE, ["equal"], [0])[0]
    base = spec_hash(cell_spec(SMOKE, cell))
    more_workers = dataclasses.replace(SMOKE, workers=8, seeds=(5,))
    longer = dataclasses.replace(SMOKE, epochs=3)
    assert spec_hash(cell_spec(more_workers, cell)) == base
    assert spec_hash(cell_spec(longer, cell)) != base
    other_seed = plan(SMOKE, ["equal"], [1])[0]
    assert spec_hash(cell_spec(SMOKE, other_seed)) != base


# -- result files -------------------------------------------------------------------------------


def _result(cell: Cell, pq: float | None, epochs: int = 2, **extra: object) -> dict:
    return new_result(
        SMOKE,
        cell,
        pq=pq,
        pq_th=None if pq is None else pq + 1.0,
        pq_st=None if pq is None else pq - 1.0,
        epochs=epochs,
        search_epochs=extra.pop("search_epochs", 0),
        wall_seconds=60.0,
        search_wall_seconds=0.0,
        **extra,
    )


def test_result_round_trip_and_stale_or_broken_files(tmp_path: Path) -> None:
    cell = plan(SMOKE, ["equal"], [0])[0]
    current = spec_hash(cell_spec(SMOKE, cell))
    path = write_result(tmp_path, _result(cell, 12.5))
    assert path == result_path(tmp_path, "smoke-equal-s0")
    assert [p.name for p in tmp_path.iterdir()] == ["smoke-equal-s0.json"]  # no temp left
    assert read_result(tmp_path, cell.key, current)["pq"] == 12.5
    assert read_result(tmp_path, cell.key, "0123456789") is None  # another configuration
    assert read_result(tmp_path, "smoke-published-s0", current) is None  # missing
    path.write_text('{"key": "smoke-equal-s0", "pq": 1')  # interrupted by hand
    assert read_result(tmp_path, cell.key, current) is None


def test_done_results_skips_stale_cells(tmp_path: Path) -> None:
    equal, published = plan(SMOKE, ["equal", "published"], [0])
    write_result(tmp_path, _result(equal, 10.0))
    stale = _result(published, 11.0)
    stale["config_hash"] = "stale00000"
    write_result(tmp_path, stale)
    assert set(done_results(tmp_path, SMOKE, [equal, published])) == {"smoke-equal-s0"}


# -- aggregation ------------------------------------------------------------------------------


def test_mean_std_is_sample_std_over_finite_values() -> None:
    stat = mean_std([10.0, 12.0, 14.0, None, float("nan")])
    assert (stat.mean, stat.std, stat.n) == (12.0, 2.0, 3)
    assert mean_std([7.0]).std is None
    assert mean_std([None]) is None


def test_table_aggregates_seeds_marks_pending_and_adds_search_cost() -> None:
    cells = {c.key: c for c in plan(SMOKE, ["equal", "ensemble"], [0, 1, 2])}
    results = {
        "smoke-equal-s0": _result(cells["smoke-equal-s0"], 10.0),
        "smoke-equal-s1": _result(cells["smoke-equal-s1"], 14.0),
        "smoke-ensemble-s0": _result(cells["smoke-ensemble-s0"], 13.0, search_epochs=3),
        "smoke-ensemble-s1": _result(cells["smoke-ensemble-s1"], 14.0, search_epochs=3),
    }
    rows = {r.row.name: r for r in table(SMOKE, ["equal", "ensemble"], [0, 1, 2], results)}
    equal = rows["equal"]
    assert equal.seeds_done == (0, 1) and equal.pending == (2,)
    assert equal.metrics["pq"].mean == 12.0
    assert equal.metrics["pq"].std == pytest.approx(2.8284271, abs=1e-6)  # sqrt(8)
    assert equal.metrics["pq_th"].mean == 13.0
    assert equal.total_epochs == 2.0
    assert rows["ensemble"].total_epochs == 5.0  # 2 own + 3 of the exploration
    assert rows["ensemble"].wall_minutes.mean == 1.0
    assert rows["ada-a"].metrics["pq"] is None and rows["ada-a"].pending == (0, 1, 2)
    # paired: (13 − 10, 14 − 14) → mean 1.5, std sqrt(4.5)
    delta = paired_delta(results, SMOKE, "ensemble", "equal", [0, 1, 2])
    assert (delta.mean, delta.n) == (1.5, 2)
    assert delta.std == pytest.approx(2.1213203, abs=1e-6)
    text = markdown_table(list(rows.values()), results, SMOKE, [0, 1, 2])
    assert "| 12.00 ± 2.83 |" in text
    assert "+1.50 ± 2.12" in text
    assert "| 2 + 3 = 5 |" in text
    assert text.count("pending") == 3  # ada-a's PQ, PQ_th, PQ_st


# -- scheduling ---------------------------------------------------------------------------------


def _cell(key: str, slots: int = 1, deps: tuple[str, ...] = ()) -> Cell:
    return Cell(key, "train", 0, key, {}, deps, slots, 6)


def test_next_cells_fills_slots_in_order_and_waits_for_dependencies() -> None:
    cells = [_cell("explore", 2), _cell("a"), _cell("t", deps=("explore",)), _cell("b")]
    start, blocked = next_cells(cells, set(), {}, set(), jobs=2)
    assert [c.key for c in start] == ["explore"] and not blocked
    # explore running on both slots: nothing fits
    assert next_cells(cells, set(), {"explore": 2}, set(), jobs=2)[0] == []
    # explore done: a and then b (t's dependency is done too, so t comes before b)
    start, _ = next_cells(cells, {"explore"}, {}, set(), jobs=2)
    assert [c.key for c in start] == ["a", "t"]
    # a two-slot cell that does not fit stops the scan (no starvation by one-slot cells)
    start, _ = next_cells([_cell("a"), _cell("big", 2), _cell("b")], set(), {"x": 1}, set(), 2)
    assert [c.key for c in start] == ["a"]
    # one job: a two-slot cell still runs, on the one slot
    assert [c.key for c in next_cells([_cell("big", 2)], set(), {}, set(), jobs=1)[0]] == ["big"]


def test_next_cells_blocks_dependents_of_failed_cells() -> None:
    cells = [_cell("explore", 2), _cell("t1", deps=("explore",)), _cell("t2", deps=("t1",))]
    start, blocked = next_cells(cells, set(), {}, {"explore"}, jobs=2)
    assert start == [] and blocked == {"t1", "t2"}


def test_eta_uses_process_seconds_per_planned_epoch() -> None:
    finished = [(_cell("a"), 60.0), (_cell("explore", 2), 30.0)]  # 6 + 6 epochs: 120 s
    remaining = [_cell("b"), _cell("c")]  # 12 epochs at 10 process-s each, on 2 slots
    assert eta_seconds(finished, remaining, jobs=2) == pytest.approx(60.0)
    assert eta_seconds([], remaining, jobs=2) is None


# -- resume: a benchmark whose cells are all cached runs nothing --------------------------------


def test_cached_benchmark_runs_nothing_and_renders_the_report(tmp_path: Path) -> None:
    rows, seeds = ["equal", "published"], [0]
    paths = Paths(
        work=tmp_path / "work",
        data=tmp_path / "work" / "data",
        store=tmp_path / "work" / "store",
        logs=tmp_path / "work" / "logs",
        results=tmp_path / "results",
        report=tmp_path,
    )
    for cell, pq in zip(plan(SMOKE, rows, seeds), (20.0, 23.5), strict=True):
        write_result(paths.results, _result(cell, pq, weights_history=[{"semantic": 1.0}]))
    args = argparse.Namespace(scale="smoke", seeds=seeds, rows=rows, jobs=2)
    assert run_all(args, SMOKE, paths) == 0
    assert not paths.work.exists()  # no data, store or process was needed
    readme = (tmp_path / "README.md").read_text()
    assert "2 of 2 cells done." in readme
    assert "| 23.50 |" in readme and "+3.50" in readme
    assert "--rows equal published" in readme
    assert (tmp_path / "pq_vs_cost.png").stat().st_size > 0
    assert (tmp_path / "weights.png").stat().st_size > 0


# -- PBT-like baseline ------------------------------------------------------------------------


def test_perturb_is_lognormal_per_loss() -> None:
    weights = {"semantic": 1.0, "center": 200.0, "offset": 0.01}
    got = pbt.perturb(weights, np.random.default_rng(3), sigma=0.5)
    eps = np.random.default_rng(3).normal(0.0, 0.5, size=3)
    assert got == pytest.approx(
        {k: v * np.exp(e) for (k, v), e in zip(weights.items(), eps, strict=True)}
    )


def _complete(record: dict, pqs: list[float | None]) -> None:
    record["results"] = [
        None if pq is None else {"pq": pq, "checkpoint_uri": f"ckpt-r{record['round']}-m{j}"}
        for j, pq in enumerate(pqs)
    ]
    for j, pq in enumerate(pqs):
        if pq is None:
            record["results"][j] = {"pq": None, "diverged": "nan", "checkpoint_uri": None}


def test_pbt_rounds_broadcast_the_best_member() -> None:
    config = pbt.PbtConfig("pbt-x", ("a", "b"), population=3, rounds=3, sigma=0.5, seed=7)
    state = pbt.new_state(config, "init-uri")
    assert state["rounds"][0]["weights"] == [{"a": 1.0, "b": 1.0}]
    _complete(state["rounds"][0], [4.0])
    first = pbt.open_next_round(state, config)
    # round 1 restarts from the initial model, parent = the pseudo epoch's ones
    assert first["init_checkpoint_uri"] == "init-uri"
    assert first["parent_weights"] == {"a": 1.0, "b": 1.0}
    rng = pbt.round_rng(7, 1)
    assert first["weights"] == [pbt.perturb({"a": 1.0, "b": 1.0}, rng, 0.5) for _ in range(3)]
    with pytest.raises(ValueError, match="not complete"):
        pbt.open_next_round(state, config)
    _complete(first, [5.0, 6.0, 6.0])  # tie: the lower member wins
    assert pbt.best_member(first) == 1
    second = pbt.open_next_round(state, config)
    assert second["init_checkpoint_uri"] == "ckpt-r1-m1"
    assert second["parent_weights"] == first["weights"][1]
    _complete(second, [None, None, None])  # all diverged: round 1's best stays
    third = pbt.open_next_round(state, config)
    assert third["init_checkpoint_uri"] == "ckpt-r1-m1"
    _complete(third, [7.0, None, 2.0])
    assert pbt.open_next_round(state, config) is None  # after the last round
    assert pbt.final_best(state)["checkpoint_uri"] == "ckpt-r3-m0"
    assert pbt.trained_members(state) == 1 + 3 * 3
    task = pbt.assignment(config, third, 2, lambda key: f"file:///s/{key}")
    assert task["id"] == "r003-m02-a1"
    assert (task["epoch"], task["epochs"]) == (2, 3)
    assert task["checkpoint_uri"] == "file:///s/runs/pbt-x/checkpoints/r003-m02.pt"


# -- process helpers --------------------------------------------------------------------------


def test_sigterm_becomes_keyboard_interrupt_inside_only() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), stop_signals_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
    assert signal.getsignal(signal.SIGTERM) == before


def test_reap_returns_exited_children_once() -> None:
    children = ChildProcesses()
    quick = children.start([sys.executable, "-c", "pass"])
    slow = children.start([sys.executable, "-c", "import time; time.sleep(30)"])
    quick.wait()
    try:
        assert children.reap() == [quick]
        assert children.reap() == []
        assert children.procs == [slow]
    finally:
        children.stop_all()
    assert slow.returncode == -signal.SIGTERM

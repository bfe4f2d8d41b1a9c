"""The effectiveness benchmark's harness: cell keys, caching and resume, scheduling, the
table and the PBT baseline's pure logic, and the held-out protocol (phases, splits, the
neutral grid, the frozen-settings check, the paired bootstrap). No training here: the
benchmark itself is the end-to-end run (``bench/effectiveness/run.py --scale smoke`` and
``--scale smoke-heldout``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.effectiveness.figures import off_scale_floor, spread_labels
from bench.effectiveness.held_out import PhaseTable, held_out_table, planned_epochs
from bench.effectiveness.plan import (
    DEV,
    EXPLORE,
    GRID,
    GRID_POINT,
    HELD_OUT_VARIANTS,
    LEGACY_ROWS,
    PBT,
    PLAIN_HEADS,
    PSEUDO,
    SCALED_HEADS,
    SCALES,
    TEST,
    TRANSFER,
    UNTRAINED,
    VARIANTS,
    Cell,
    cell_spec,
    default_row_names,
    eval_split,
    grid_weights,
    neutral_centre,
    neutral_grid_point,
    phase_of,
    plan,
    spec_hash,
    train_split,
)
from bench.effectiveness.protocol import (
    FrozenFile,
    freeze_problems,
    frozen_document,
    phase_seed_problems,
    problems_before_test,
    settings_hash,
)
from bench.effectiveness.report import markdown_table, paired_delta
from bench.effectiveness.results import (
    bootstrap_distribution,
    bootstrap_interval,
    done_results,
    mean_std,
    new_result,
    paired,
    read_result,
    result_path,
    table,
    write_result,
)
from bench.effectiveness.run import (
    Paths,
    eta_seconds,
    next_cells,
    paths_for,
    read_frozen,
    run_all,
)
from pipelines.local import ChildProcesses, ControllerProcess, stop_signals_as_interrupt

SMOKE = SCALES["smoke"]  # grid factors (0.1, 10): a 2 × 2 grid
HELD = SCALES["smoke-heldout"]  # the same sizes on the held-out protocol: dev seed 0, test 1
MEDIUM = SCALES["medium"]


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
    paths = _tmp_paths(tmp_path)
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


def test_collapsed_rows_are_drawn_off_scale_below_half_the_median() -> None:
    assert off_scale_floor([0.0, 25.0, 28.0, 30.0]) == pytest.approx(14.0)  # upper median 28
    assert off_scale_floor([17.36, 35.63, 36.75]) == pytest.approx(17.815)


def test_spread_labels_keeps_order_and_gap_and_stays_near_its_points() -> None:
    assert spread_labels([3.0, 0.0, 10.0], gap=1.0) == [3.0, 0.0, 10.0]  # nothing collides
    assert spread_labels([0.0, 0.0], gap=1.0) == [-0.5, 0.5]  # centred on the points
    # a block of three: start = mean(0 - 0, 0.2 - 1, 0.4 - 2) = -0.8
    assert spread_labels([0.4, 0.0, 0.2], gap=1.0) == pytest.approx([1.2, -0.8, 0.2])
    # two blocks that collide once centred merge: start = mean(0, -1, 1.5 - 2, 1.5 - 3) = -0.75
    placed = spread_labels([0.0, 0.0, 1.5, 1.5], gap=1.0)
    assert placed == pytest.approx([-0.75, 0.25, 1.25, 2.25])


# -- controller runs --------------------------------------------------------------------------


def test_the_defaults_variant_is_what_a_run_gets_by_default() -> None:
    """The rows labelled "the service's defaults" run what POST /v1/runs gives a run that
    names none of its options: the paper's settings changed by DEFAULTS_VARIANT."""
    from bench.effectiveness.plan import DEFAULTS_VARIANT
    from controller_service.runs import PAPER_SETTINGS, RunSpec

    config = RunSpec(loss_names=("a", "b")).config()
    chosen = {**PAPER_SETTINGS, **VARIANTS[DEFAULTS_VARIANT]}
    assert {key: config[key] for key in chosen} == chosen


def test_pbt_runs_through_the_service_strategy_and_variants_change_the_papers_settings() -> None:
    from bench.effectiveness.cells import run_options
    from controller_service.runs import PAPER_SETTINGS, RunSpec

    loss_names = ("semantic", "center", "offset")
    (pbt_cell,) = [c for c in plan(MEDIUM, ["pbt"], [0]) if c.kind == PBT]
    assert run_options(pbt_cell) == {"strategy": "pbt", "sigma": MEDIUM.pbt_sigma}
    (explore,) = [c for c in plan(MEDIUM, ["ada-a-local-plr5e-3-rel0.5"], [0])]
    options = run_options(explore)
    assert options == {**PAPER_SETTINGS, **VARIANTS["local-plr5e-3-rel0.5"]}
    # both are requests the service accepts (PBT takes none of Ada-Segment's options)
    pbt_spec = RunSpec.from_request({"loss_names": loss_names, **run_options(pbt_cell)})
    assert pbt_spec.strategy == "pbt"
    assert RunSpec.from_request({"loss_names": loss_names, **options}).policy_lr == 5e-3
    # issue 12's options: medium rows only (issue 7's table is unchanged), each a valid run
    for variant, changes in HELD_OUT_VARIANTS.items():
        assert f"ada-a-{variant}" in MEDIUM.rows and f"ada-a-{variant}" not in LEGACY_ROWS
        (cell, _) = plan(MEDIUM, [f"ensemble-{variant}"], [0])
        spec = RunSpec.from_request({"loss_names": loss_names, **run_options(cell)})
        assert {name: getattr(spec, name) for name in changes} == changes


def test_the_controller_is_started_for_pbt_and_every_policy_cell_only() -> None:
    from bench.effectiveness.run import needs_controller

    assert needs_controller(plan(MEDIUM, ["pbt"], [0]))  # alone: a run of the pbt strategy
    for row in ("ada-a", "ensemble", "untrained", "grid-neutral"):  # pseudo epochs too
        assert needs_controller(plan(MEDIUM, [row], [0])), row
    assert not needs_controller(plan(MEDIUM, ["equal", "published", "grid", "gradnorm"], [0]))


def test_smoke_benchmark_runs_pbt_and_ada_segment_through_the_service(tmp_path: Path) -> None:
    """End to end at the smoke scale: run_all starts a real controller and real workers;
    the PBT row is a `pbt` run of the service, Ada-Segment-A an `ada-segment` run, and the
    untrained row reads the exploration's round-1 mean."""
    from bench.effectiveness.cells import model_loss_names

    paths = paths_for(SMOKE, work_root=tmp_path)
    rows, seeds = ["pbt", "untrained"], [0]
    args = argparse.Namespace(scale="smoke", seeds=seeds, rows=rows, jobs=2)
    assert run_all(args, SMOKE, paths) == 0, sorted(p.name for p in paths.logs.iterdir())
    results = done_results(paths.results, SMOKE, plan(SMOKE, rows, seeds))
    pbt_result, explore = results["smoke-pbt-s0"], results["smoke-ada-a-s0"]
    assert pbt_result["run_config"]["strategy"] == "pbt"
    assert explore["run_config"]["strategy"] == "ada-segment"
    for result in (pbt_result, explore):
        rounds = result["rounds"]
        assert [r["round"] for r in rounds] == [0, 1, 2]  # the pseudo epoch and T = 2
        assert [len(r["members"]) for r in rounds] == [1, 2, 2]
        assert result["epochs"] == 1 + 2 * 2
        assert result["best"]["round"] >= 1 and 0 <= result["pq"] <= 100
    # PBT: no policy; round t's parent is round t-1's best member (all 1 after round 0)
    assert all(r["mean_weights"] is None for r in pbt_result["rounds"])
    first, second = pbt_result["rounds"][1], pbt_result["rounds"][2]
    assert first["strategy"]["parent_weights"] == [1.0, 1.0, 1.0]
    best = first["members"][first["best_member"]]["weights"]
    names = model_loss_names(SMOKE)  # the run's order (result files sort their keys)
    assert second["strategy"]["parent_weights"] == pytest.approx([best[n] for n in names])
    untrained = results["smoke-untrained-s0"]
    assert untrained["weights"] == explore["rounds"][1]["mean_weights"]


def test_a_transfer_whose_exploration_run_is_gone_names_the_result_to_move(
    tmp_path: Path, controller: ControllerProcess
) -> None:
    """The exploration's policy lives in the work folder's store, its result in git: after a
    new checkout the result still counts as done, and the transfer must say so, not 404."""
    from bench.effectiveness.cells import Context, run_cell

    cells = {c.key: c for c in plan(SMOKE, ["ensemble"], [0])}
    write_result(tmp_path, _result(cells["smoke-ada-a-s0"], 10.0, run_id="0123456789ab"))
    ctx = Context(
        scale=SMOKE,
        data_dir=tmp_path,
        store_uri=controller.store_uri,
        results_dir=tmp_path,
        work_dir=tmp_path,
        logs_dir=tmp_path,
        children=ChildProcesses(),
        cells=cells,
        controller_url=controller.url,
    )
    moved = result_path(tmp_path, "smoke-ada-a-s0")
    with pytest.raises(RuntimeError, match="run 0123456789ab is not in the store") as refused:
        run_cell(ctx, cells["smoke-ensemble-s0"])
    assert f"move {moved} aside" in str(refused.value)


def test_mask_scale_trains_its_model_in_every_kind_of_cell(tmp_path: Path) -> None:
    """Issue 14's table at smoke size: a static row (published: Mask2Former's weights),
    the pseudo epoch (a controller run created with the ten loss names, trained by a
    worker) and the untrained policy's ten weights held fixed, all with the mask
    transformer; the report names the model and its losses."""
    from bench.effectiveness.cells import model_loss_names
    from trainer_image.models.mask_transformer import MaskTransformer

    scale = SCALES["smoke-mask"]
    paths = paths_for(scale, work_root=tmp_path)
    rows, seeds = ["published", "untrained"], [0]
    args = argparse.Namespace(scale=scale.name, seeds=seeds, rows=rows, jobs=2, phase=DEV)
    assert run_all(args, scale, paths) == 0, sorted(p.name for p in paths.logs.iterdir())
    results = done_results(paths.results, scale, plan(scale, rows, seeds))
    names = model_loss_names(scale)
    assert names == list(MaskTransformer.loss_names) and len(names) == 10
    published = results["smoke-mask-published-s0"]
    assert published["weights_history"][0] == MaskTransformer.published_weights
    pseudo = results["smoke-mask-pseudo-s0"]
    assert sorted(pseudo["initial_losses"]) == sorted(names)
    untrained = results["smoke-mask-untrained-s0"]
    assert untrained["weights"] == pseudo["mean_weights"] and len(untrained["weights"]) == 10
    # trained with them (the flag carries 6 significant digits)
    assert untrained["weights_history"][0] == pytest.approx(pseudo["mean_weights"], rel=1e-5)
    readme = (paths.report / "README.md").read_text()
    assert "`mask_transformer` at its tiny preset, 10 losses" in readme
    assert f"| λ ({', '.join(names)}) |" in readme
    assert "### Grid searches" not in readme  # no grid for ten losses


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


# -- the held-out protocol (issue 12) ---------------------------------------------------------


def test_small_results_stay_current_after_the_held_out_additions() -> None:
    """Issue 7's committed results must keep their hashes: the new scale fields and rows
    are left out of the small scale's identity and table."""
    small = SCALES["small"]
    assert default_row_names(small) == list(LEGACY_ROWS)
    cells = plan(small, default_row_names(small), [0, 1, 2, 3, 4])
    results_dir = Path(__file__).resolve().parents[1] / "bench" / "effectiveness" / "results"
    assert len(done_results(results_dir, small, cells)) == len(cells) == 155


def test_phases_choose_the_seeds_and_the_split_a_cell_is_scored_on() -> None:
    assert (phase_of(MEDIUM, 0), phase_of(MEDIUM, 2), phase_of(MEDIUM, 3)) == (DEV, DEV, TEST)
    assert MEDIUM.test_seeds == (3, 4, 5, 6, 7) and not set(MEDIUM.dev_seeds) & {3, 4, 5, 6, 7}
    with pytest.raises(ValueError, match="neither a dev seed"):
        phase_of(MEDIUM, 8)
    with pytest.raises(ValueError, match="neither a dev seed"):
        plan(MEDIUM, ["equal"], [8])
    # every row trains on proxy-train; dev is scored on proxy-val, test on val
    assert (train_split(MEDIUM, 1), eval_split(MEDIUM, 1)) == ("proxy-train-s1", "proxy-val-s1")
    assert (train_split(MEDIUM, 5), eval_split(MEDIUM, 5)) == ("proxy-train-s5", "val")
    # issue 7's scales: all of train, scored on val, no phase
    assert phase_of(SMOKE, 0) is None
    assert (train_split(SMOKE, 0), eval_split(SMOKE, 0)) == ("train", "val")
    dev = cell_spec(HELD, plan(HELD, ["equal"], [0])[0])
    test = cell_spec(HELD, plan(HELD, ["equal"], [1])[0])
    assert (dev["phase"], dev["eval_split"], test["phase"], test["eval_split"]) == (
        DEV,
        "proxy-val-s0",
        TEST,
        "val",
    )
    assert "phase" not in cell_spec(SMOKE, plan(SMOKE, ["equal"], [0])[0])


def test_phase_seed_problems_keep_dev_runs_off_test_seeds() -> None:
    assert phase_seed_problems(MEDIUM, DEV, [0, 1, 2]) == []
    assert phase_seed_problems(MEDIUM, TEST, [3, 7]) == []
    assert "seeds [3] are not dev seeds" in phase_seed_problems(MEDIUM, DEV, [0, 3])[0]
    assert "seeds [0] are not test seeds" in phase_seed_problems(MEDIUM, TEST, [0, 4])[0]


def test_held_out_rows_share_one_pseudo_epoch_and_name_their_head_rule() -> None:
    cells = plan(HELD, ["untrained", "grid-neutral", "uncertainty", "published-plain"], [0])
    by_key = {c.key: c for c in cells}
    pseudo = by_key["smoke-heldout-pseudo-s0"]
    assert [c.key for c in cells].count(pseudo.key) == 1
    assert (pseudo.kind, pseudo.row, pseudo.planned_epochs) == (PSEUDO, None, 1)
    # the untrained policy needs the pseudo epoch alone, not a whole exploration
    untrained = by_key["smoke-heldout-untrained-s0"]
    assert untrained.deps == (pseudo.key,)
    assert not any(c.kind == EXPLORE for c in cells)
    points = [c for c in cells if c.kind == GRID_POINT]
    assert [c.key for c in points] == [
        "smoke-heldout-gridn-center0.1x-offset0.1x-s0",
        "smoke-heldout-gridn-center0.1x-offset10x-s0",
        "smoke-heldout-gridn-center10x-offset0.1x-s0",
        "smoke-heldout-gridn-center10x-offset10x-s0",
    ]
    assert all(c.deps == (pseudo.key,) for c in points)
    grid = by_key["smoke-heldout-grid-neutral-s0"]
    assert (grid.kind, grid.deps, grid.planned_epochs) == (GRID, tuple(c.key for c in points), 0)
    heads = {c.row: c.params["head_lr"] for c in cells if c.row}
    assert heads["untrained"] == SCALED_HEADS
    assert heads["uncertainty"] == PLAIN_HEADS  # the trainer's only rule for it
    assert heads["published-plain"] == PLAIN_HEADS
    # issue 7's untrained row still reads the exploration's round 1
    assert plan(SMOKE, ["untrained"], [0])[1].deps == ("smoke-ada-a-s0",)


def test_neutral_grid_is_log_spaced_around_the_equal_loss_normalisation() -> None:
    l1 = {"semantic": 2.0, "center": 0.02, "offset": 4.0}
    assert neutral_centre(l1) == {"semantic": 1.0, "center": 100.0, "offset": 0.5}
    points = [
        neutral_grid_point(l1, c.params["factors"])
        for c in plan(HELD, ["grid-neutral"], [0])
        if c.kind == GRID_POINT
    ]
    assert points == [
        {"semantic": 1.0, "center": 10.0, "offset": 0.05},
        {"semantic": 1.0, "center": 10.0, "offset": 5.0},
        {"semantic": 1.0, "center": 1000.0, "offset": 0.05},
        {"semantic": 1.0, "center": 1000.0, "offset": 5.0},
    ]
    with pytest.raises(ValueError, match="cannot normalise"):
        neutral_centre({"semantic": 2.0, "center": 0.0, "offset": 1.0})


def test_row_cost_counts_everything_a_seed_of_it_trains() -> None:
    e, search = MEDIUM.epochs, MEDIUM.search_epochs
    assert MEDIUM.population == 8 and MEDIUM.rounds == e >= 12
    assert search == 1 + 8 * e
    assert planned_epochs(MEDIUM, "equal") == e
    assert planned_epochs(MEDIUM, "untrained") == e + 1  # and its pseudo epoch
    assert planned_epochs(MEDIUM, "grid-neutral") == 1 + 9 * e
    assert planned_epochs(MEDIUM, "grid") == 9 * e
    assert planned_epochs(MEDIUM, "ensemble") == e + search


def test_bootstrap_interval_on_hand_computed_distributions() -> None:
    # two seeds: means 1, 2, 3 with probabilities 1/4, 1/2, 1/4
    assert sorted(bootstrap_distribution([1.0, 3.0])) == [(1.0, 0.25), (2.0, 0.5), (3.0, 0.25)]
    assert bootstrap_interval([1.0, 3.0]) == (1.0, 3.0)
    # [0, 0, 0, 3]: P(mean 0) = (3/4)^4 = .316; P(mean 3) = (1/4)^4 = .0039 < .025, and
    # P(mean >= 2.25) = .0469 + .0039 >= .025, so the upper 97.5 % quantile is 2.25
    assert bootstrap_interval([0.0, 0.0, 0.0, 3.0]) == (0.0, 2.25)
    distribution = dict(bootstrap_distribution([0.0, 0.0, 0.0, 3.0]))
    assert sum(distribution.values()) == pytest.approx(1.0)
    assert distribution[0.0] == pytest.approx(81 / 256)
    assert distribution[2.25] == pytest.approx(12 / 256)
    # 50 %: CDF(0) = 81/256 >= .25; CDF(0.75) = 189/256 = .738 < .75 <= CDF(1.5) = 243/256
    assert bootstrap_interval([0.0, 0.0, 0.0, 3.0], level=0.5) == (0.0, 1.5)
    assert bootstrap_interval([5.0]) == (5.0, 5.0)


def test_paired_table_gives_intervals_and_wins_against_both_baselines() -> None:
    cells = {c.key: c for c in plan(HELD, ["equal", "untrained"], [0, 1])}
    results = {}
    for seed, (equal, untrained) in enumerate([(10.0, 11.0), (12.0, 15.0)]):
        for row, pq in (("equal", equal), ("untrained", untrained)):
            key = f"smoke-heldout-{row}-s{seed}"
            results[key] = new_result(
                HELD, cells[key], pq=pq, pq_th=pq, pq_st=pq, epochs=2, search_epochs=0,
                wall_seconds=60.0, search_wall_seconds=0.0,
            )  # fmt: skip
    compared = paired(results, HELD, "untrained", "equal", [0, 1])
    assert (compared.diffs, compared.mean, compared.interval) == ((1.0, 3.0), 2.0, (1.0, 3.0))
    assert (compared.wins, compared.losses) == (2, 0)
    assert compared.format() == "+2.00 [+1.00, +3.00], 2–0"
    assert paired(results, HELD, "untrained", "equal", [5]) is None
    rows = table(HELD, ["equal", "untrained"], [0, 1], results)
    text = held_out_table(HELD, PhaseTable(DEV, [0, 1], [], rows, results))
    assert "| either (λ = 1) | 11.00 ± 1.41 |" in text
    assert "| +2.00 [+1.00, +3.00], 2–0 | – |" in text  # untrained: vs equal, vs itself
    assert "| – | -2.00 [-3.00, -1.00], 0–2 |" in text  # equal: vs itself, vs untrained


def _frozen(scale: object, rows: list[str], commit: str | None = "c0ffee" * 6, clean=True):
    return FrozenFile(frozen_document(scale, rows, "2026-12-01"), commit, clean)


def test_test_phase_needs_committed_frozen_settings_that_still_hold() -> None:
    rows = ["equal", "untrained"]
    assert problems_before_test(HELD, rows, _frozen(HELD, rows)) == []
    missing = problems_before_test(HELD, rows, FrozenFile(None, None, False))
    assert "no frozen settings" in missing[0]
    for uncommitted in (
        _frozen(HELD, rows, commit=None, clean=False),
        _frozen(HELD, rows, clean=False),
    ):
        assert "not committed" in problems_before_test(HELD, rows, uncommitted)[0]
    only_equal = problems_before_test(HELD, rows, _frozen(HELD, ["equal"]))
    assert only_equal == ["row 'untrained' was not frozen (frozen: equal)"]
    # a setting changed after the freeze (here the lr): the row's hash no longer matches
    changed = dataclasses.replace(HELD, lr=0.05)
    assert settings_hash(changed, "equal") != settings_hash(HELD, "equal")
    problems = problems_before_test(changed, rows, _frozen(HELD, rows))
    assert len(problems) == 2 and all("changed since they were frozen" in p for p in problems)
    assert "no test phase" in problems_before_test(SMOKE, rows, _frozen(HELD, rows))[0]
    # the settings of a row are its dependencies' too, and the same for every seed
    assert settings_hash(HELD, "untrained") == settings_hash(HELD, "untrained")
    other_centre = dataclasses.replace(HELD, grid_factors=(0.5, 2.0))
    assert settings_hash(other_centre, "grid-neutral") != settings_hash(HELD, "grid-neutral")


def test_freeze_is_refused_once_a_row_has_test_results() -> None:
    assert freeze_problems(HELD, ["equal"], ["smoke-heldout-equal-s0"]) == []  # dev only
    problems = freeze_problems(HELD, ["equal", "untrained"], ["smoke-heldout-untrained-s1"])
    assert problems == [
        "row 'untrained' already has test results (smoke-heldout-untrained-s1): its settings "
        "were frozen before them and cannot be chosen again"
    ]
    assert "nothing to freeze" in freeze_problems(SMOKE, ["equal"], [])[0]


def test_a_freeze_adds_rows_to_the_frozen_file() -> None:
    first = frozen_document(HELD, ["equal"], "monday")
    second = frozen_document(HELD, ["untrained"], "tuesday", previous=first)
    assert second["rows"] == {
        "equal": settings_hash(HELD, "equal"),
        "untrained": settings_hash(HELD, "untrained"),
    }
    assert second["row_frozen_at"] == {"equal": "monday", "untrained": "tuesday"}
    # another scale's file is not carried over
    other = dict(first, scale="elsewhere")
    assert list(frozen_document(HELD, ["untrained"], "t", previous=other)["rows"]) == ["untrained"]
    both = FrozenFile(second, "c0ffee" * 6, True)
    assert problems_before_test(HELD, ["equal", "untrained"], both) == []


def _git(repo: Path, *args: str) -> str:
    author = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run(
        ["git", "-C", str(repo), *author, *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_read_frozen_asks_git_whether_the_file_is_committed(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    path = tmp_path / "frozen" / "x.json"
    assert read_frozen(path) == FrozenFile(None, None, False)
    path.parent.mkdir()
    path.write_text(json.dumps({"rows": {"equal": "abc"}}))
    untracked = read_frozen(path)
    assert (untracked.document, untracked.commit, untracked.clean) == (
        {"rows": {"equal": "abc"}},
        None,
        False,
    )
    _git(tmp_path, "add", "frozen/x.json")
    assert read_frozen(path).commit is None  # staged is not committed
    _git(tmp_path, "commit", "-q", "-m", "freeze")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert read_frozen(path) == FrozenFile({"rows": {"equal": "abc"}}, head, True)
    path.write_text(json.dumps({"rows": {"equal": "def"}}))  # changed after the commit
    assert read_frozen(path) == FrozenFile({"rows": {"equal": "def"}}, head, False)


def _tmp_paths(tmp_path: Path) -> Paths:
    """Every folder of a benchmark under ``tmp_path``; the report in it."""
    return Paths(
        work=tmp_path / "work",
        data=tmp_path / "work" / "data",
        store=tmp_path / "work" / "store",
        logs=tmp_path / "work" / "logs",
        results=tmp_path / "results",
        report=tmp_path,
        frozen=tmp_path / "frozen.json",
    )


def test_run_refuses_test_cells_without_a_committed_freeze(tmp_path: Path, capsys) -> None:
    paths = _tmp_paths(tmp_path)
    args = argparse.Namespace(scale=HELD.name, phase=TEST, seeds=[1], rows=["equal"], jobs=1)
    assert run_all(args, HELD, paths) == 2
    assert "no frozen settings" in capsys.readouterr().out
    paths.frozen.write_text(json.dumps(frozen_document(HELD, ["equal"], "now")))
    assert run_all(args, HELD, paths) == 2  # written, but git has never seen it
    assert "not committed" in capsys.readouterr().out
    dev_on_test_seed = argparse.Namespace(
        scale=HELD.name, phase=DEV, seeds=[1], rows=["equal"], jobs=1
    )
    assert run_all(dev_on_test_seed, HELD, paths) == 2
    assert "not dev seeds" in capsys.readouterr().out
    assert not paths.work.exists() and not paths.results.exists()  # nothing ran


def test_held_out_readme_gives_the_test_table_and_its_weights_once_test_seeds_ran() -> None:
    """Before any test cell: the test table says so and the only weights are the dev
    seeds'. With a test seed done: its table row, paired with equal weights, and the test
    seeds' weights table."""
    from bench.effectiveness.held_out import held_out_markdown

    def phase(name: str, seeds: list[int], pqs: dict[str, float]) -> PhaseTable:
        cells = plan(HELD, ["equal", "uncertainty"], seeds)
        results = {
            cell.key: new_result(
                HELD, cell, pq=pqs[cell.row], pq_th=1.0, pq_st=2.0, epochs=2, wall_seconds=6.0
            )
            for cell in cells
            if cell.row in pqs
        }
        rows = table(HELD, ["equal", "uncertainty"], seeds, results)
        return PhaseTable(phase=name, seeds=seeds, cells=cells, rows=rows, results=results)

    def readme(test: PhaseTable) -> str:
        dev = phase(DEV, [0], {"equal": 30.0, "uncertainty": 31.0})
        return held_out_markdown(
            scale=HELD,
            phases={DEV: dev, TEST: test},
            frozen=None,
            machine="test",
            per_epoch=3.0,
            notes=None,
            analysis=None,
            plots={},
        )

    before = readme(phase(TEST, [1], {}))
    assert "_(not run: settings not frozen yet)_" in before
    assert "(test seeds)" not in before and "### Weights of the static rows (dev seeds)" in before
    after = readme(phase(TEST, [1], {"equal": 40.0, "uncertainty": 38.5}))
    test_table = after.split("## Test table")[1].split("## Dev table")[0]
    assert "| 38.50 |" in test_table and "-1.50 [-1.50, -1.50], 0–1" in test_table
    assert "### Weights of the static rows (test seeds)" in test_table


def test_committed_scales_keep_results_in_results_and_medium_reports_at_the_top() -> None:
    bench = Path(__file__).resolve().parents[1] / "bench" / "effectiveness"
    medium, small = paths_for(MEDIUM), paths_for(SCALES["small"])
    assert medium.results == small.results == bench / "results"
    assert (medium.report, small.report) == (bench, bench / "small")
    assert medium.frozen == bench / "frozen" / "medium.json"
    assert paths_for(HELD).frozen.is_relative_to(bench / "work")

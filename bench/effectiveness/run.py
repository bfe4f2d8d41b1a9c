"""The effectiveness benchmark (issue 7): the paper's comparison tables at small scale.

    .venv/bin/python bench/effectiveness/run.py                      # small scale, seeds 0 1 2
    .venv/bin/python bench/effectiveness/run.py --scale smoke        # the harness in minutes
    .venv/bin/python bench/effectiveness/run.py --rows equal ensemble --seeds 0
    .venv/bin/python bench/effectiveness/run.py --report-only        # README from results/

Every cell (a row for one seed, or one grid point) runs as its own process and
writes ``results/<cell-key>.json`` when done; a rerun skips the done cells,
resumes the interrupted ones (their jobs and runs are in the store under
``work/``), and Ctrl-C (or SIGTERM) stops every process it started. A
controller process serves the explorations and the transfer runs. The README
and figures are rendered from the results present after every finished cell,
with the missing ones marked pending.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `bench.effectiveness` importable
    sys.path.insert(0, str(REPO))

from bench.effectiveness.plan import (  # noqa: E402
    EXPLORE,
    GRID_POINT,
    ROWS,
    SCALES,
    TRANSFER,
    Cell,
    Scale,
    default_row_names,
    plan,
)
from bench.effectiveness.results import done_results, table, write_result  # noqa: E402
from pipelines.local import ChildProcesses, adaseg, stop_signals_as_interrupt  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
RUN_PY = Path(__file__).resolve()
POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 30.0  # cells stop their own children first (10 s each)


@dataclass(frozen=True)
class Paths:
    """Where a scale keeps its data, store, logs, results and report."""

    work: Path
    data: Path
    store: Path
    logs: Path
    results: Path
    report: Path

    @property
    def store_uri(self) -> str:
        return self.store.as_uri()


def paths_for(scale: Scale, bench_dir: Path = BENCH_DIR) -> Paths:
    """The small scale's results and report are the committed ones; any other scale
    (smoke) keeps everything under the ignored ``work/<scale>/``."""
    work = bench_dir / "work" / scale.name
    data = work / f"data-{scale.images}-{scale.val_images}-{scale.size}-{scale.data_seed}"
    committed = scale.name == "small"
    return Paths(
        work=work,
        data=data,
        store=work / "store",
        logs=work / "logs",
        results=bench_dir / "results" if committed else work / "results",
        report=bench_dir if committed else work,
    )


# -- scheduling (pure) ----------------------------------------------------------------------------


def next_cells(
    cells: Sequence[Cell],
    done: set[str],
    running: Mapping[str, int],
    failed: set[str],
    jobs: int,
) -> tuple[list[Cell], set[str]]:
    """(cells to start now, cells that can never run because a dependency failed).

    In plan order; a cell whose dependencies are not done yet is passed over,
    but the first ready cell that does not fit in the free slots stops the scan,
    so a two-process cell is not starved by a stream of one-process cells.
    """
    free = jobs - sum(running.values())
    start: list[Cell] = []
    blocked: set[str] = set()
    for cell in cells:
        if cell.key in done or cell.key in running or cell.key in failed:
            continue
        if any(dep in failed or dep in blocked for dep in cell.deps):
            blocked.add(cell.key)
            continue
        if not all(dep in done for dep in cell.deps):
            continue
        need = min(cell.slots, jobs)
        if need > free:
            break
        start.append(cell)
        free -= need
    return start, blocked


def eta_seconds(
    finished: Sequence[tuple[Cell, float]], remaining: Sequence[Cell], jobs: int
) -> float | None:
    """Remaining planned epochs × measured process-seconds per epoch / parallel slots."""
    epochs = sum(cell.planned_epochs for cell, _ in finished)
    if not epochs:
        return None
    per_epoch = sum(seconds * cell.slots for cell, seconds in finished) / epochs
    return sum(cell.planned_epochs for cell in remaining) * per_epoch / max(1, jobs)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


# -- the orchestrator ------------------------------------------------------------------------------


def machine() -> str:
    from importlib.metadata import version

    return (
        f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU, torch {version('torch')}; "
        "shared with other engineers' jobs while it ran, so wall times are inflated"
    )


def command_line(args: argparse.Namespace) -> str:
    parts = [".venv/bin/python bench/effectiveness/run.py", f"--scale {args.scale}"]
    parts.append("--seeds " + " ".join(map(str, args.seeds)))
    if sorted(args.rows) != sorted(default_row_names()):
        parts.append("--rows " + " ".join(args.rows))
    return " ".join(parts)


def render_report(args: argparse.Namespace, scale: Scale, paths: Paths) -> Path:
    from bench.effectiveness.report import render

    cells = plan(scale, args.rows, args.seeds)
    results = done_results(paths.results, scale, cells)
    rows = table(scale, args.rows, args.seeds, results)
    return render(
        paths.report,
        scale=scale,
        seeds=args.seeds,
        rows=rows,
        results=results,
        cells_done=len(results),
        cells_total=len(cells),
        command=command_line(args),
        machine=machine(),
    )


def ensure_data(scale: Scale, paths: Paths, children: ChildProcesses) -> None:
    if (paths.data / "annotations" / "panoptic_val.json").exists():
        return
    print(f"synthesizing data into {paths.data}", flush=True)
    children.run(
        adaseg(
            "data", "synth", "--out", str(paths.data), "--images", str(scale.images),
            "--val-images", str(scale.val_images), "--size", str(scale.size),
            "--seed", str(scale.data_seed),
        ),
        log=paths.logs / "data.log",
    )  # fmt: skip


def start_controller(paths: Paths, children: ChildProcesses) -> tuple[str, object]:
    """A controller on the scale's store (runs of earlier invocations continue)."""
    from controller_service.contract.client import ControllerClient
    from controller_service.net import free_port

    port = free_port()
    log = paths.logs / "controller.log"
    proc = children.start(
        adaseg("serve", "--store", paths.store_uri, "--host", "127.0.0.1", "--port", str(port)),
        log=log,
    )
    url = f"http://127.0.0.1:{port}"
    with ControllerClient(url) as client:
        client.wait_ready(timeout=60)
    print(f"controller on {url} (log {log})", flush=True)
    return url, proc


def run_all(args: argparse.Namespace, scale: Scale, paths: Paths) -> int:
    cells = plan(scale, args.rows, args.seeds)
    done = set(done_results(paths.results, scale, cells))
    pending = [c for c in cells if c.key not in done]
    print(
        f"{scale.name} scale: {len(cells)} cells ({len(args.rows)} rows × seeds "
        f"{args.seeds} + grid points), {len(done)} done, {len(pending)} to run; "
        f"results in {paths.results}",
        flush=True,
    )
    failed: set[str] = set()
    code = 0
    if pending:
        paths.work.mkdir(parents=True, exist_ok=True)
        children = ChildProcesses()
        with stop_signals_as_interrupt():
            try:
                code = _schedule(args, scale, paths, cells, done, failed, children)
            except KeyboardInterrupt:
                print("\ninterrupted: stopping every process; run the same command to resume")
                code = 130
            finally:
                children.stop_all(grace=STOP_GRACE_SECONDS)
    readme = render_report(args, scale, paths)
    print(f"report: {readme}")
    return code


def _schedule(
    args: argparse.Namespace,
    scale: Scale,
    paths: Paths,
    cells: list[Cell],
    done: set[str],
    failed: set[str],
    children: ChildProcesses,
) -> int:
    from bench.effectiveness.cells import ensure_proxy_splits

    ensure_data(scale, paths, children)
    todo = [c for c in cells if c.key not in done]
    for seed in sorted({c.seed for c in todo if c.kind == GRID_POINT}):
        ensure_proxy_splits(paths.data, seed, scale.proxy_val)
    url, controller = None, None
    if any(c.kind in (EXPLORE, TRANSFER) for c in todo):
        url, controller = start_controller(paths, children)
    running: dict[int, tuple[Cell, float]] = {}
    finished: list[tuple[Cell, float]] = []
    total = len(cells)
    while True:
        for proc in children.reap():
            if proc is controller:
                raise RuntimeError(f"the controller exited ({proc.returncode}); see {paths.logs}")
            cell, started = running.pop(proc.pid)
            seconds = time.monotonic() - started
            if proc.returncode == 0:
                done.add(cell.key)
                finished.append((cell, seconds))
            else:
                failed.add(cell.key)
            remaining = [c for c in cells if c.key not in done and c.key not in failed]
            eta = eta_seconds(finished, remaining, args.jobs)
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            print(
                f"[{len(done)}/{total}] {cell.key} {status} in {_duration(seconds)}"
                f"{_pq_note(paths, cell)}; log {paths.logs / (cell.key + '.log')}; "
                f"ETA {_duration(eta)}",
                flush=True,
            )
            try:
                render_report(args, scale, paths)
            except Exception as exc:  # a figure must never stop the benchmark
                print(f"report rendering failed: {exc}", flush=True)
        keys = {cell.key: min(cell.slots, args.jobs) for cell, _ in running.values()}
        start, blocked = next_cells(cells, done, keys, failed, args.jobs)
        for cell in start:
            proc = _start_cell(args, scale, paths, cell, url, children)
            running[proc.pid] = (cell, time.monotonic())
            print(f"[{len(done)}/{total}] started {cell.key}", flush=True)
        if not running and not start:
            break
        time.sleep(POLL_SECONDS)
    if failed or blocked:
        print(f"failed: {sorted(failed)}; not run (a dependency failed): {sorted(blocked)}")
        return 1
    return 0


def _pq_note(paths: Paths, cell: Cell) -> str:
    import json

    path = paths.results / f"{cell.key}.json"
    if not path.exists():
        return ""
    pq = json.loads(path.read_text()).get("pq")
    return "" if pq is None else f" (PQ {pq:.2f})"


def _start_cell(
    args: argparse.Namespace,
    scale: Scale,
    paths: Paths,
    cell: Cell,
    url: str | None,
    children: ChildProcesses,
) -> object:
    argv = [sys.executable, str(RUN_PY), "--scale", scale.name, "--seeds", str(cell.seed)]
    argv += ["--jobs", str(args.jobs), "--cell", cell.key]
    if url:
        argv += ["--controller", url]
    threads = str(min(cell.slots, args.jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    return children.start(argv, log=paths.logs / f"{cell.key}.log", env=env, cwd=REPO)


def run_one_cell(args: argparse.Namespace, scale: Scale, paths: Paths) -> int:
    """The body of one cell's process (started by the orchestrator)."""
    from bench.effectiveness.cells import Context, run_cell

    cells = {c.key: c for c in plan(scale, list(ROWS), args.seeds)}
    if args.cell not in cells:
        print(f"unknown cell {args.cell!r}; cells of seeds {args.seeds}: {sorted(cells)}")
        return 2
    cell = cells[args.cell]
    print(f"cell {cell.key}: {cell.kind} {dict(cell.params)} seed {cell.seed}", flush=True)
    children = ChildProcesses()
    with stop_signals_as_interrupt():
        try:
            ctx = Context(
                scale=scale,
                data_dir=paths.data,
                store_uri=paths.store_uri,
                results_dir=paths.results,
                work_dir=paths.work,
                logs_dir=paths.logs,
                children=children,
                cells=cells,
                controller_url=args.controller,
            )
            result = run_cell(ctx, cell)
            path = write_result(paths.results, result)
            print(f"wrote {path}: PQ {result.get('pq')}", flush=True)
            return 0
        except KeyboardInterrupt:
            print("interrupted; the next run resumes this cell", flush=True)
            return 130
        except Exception:
            traceback.print_exc()
            return 1
        finally:
            children.stop_all()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/effectiveness/run.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the scale's")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=None,
        choices=list(ROWS),
        metavar="ROW",
        help=f"default: {' '.join(default_row_names())}; all: {' '.join(ROWS)}",
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="processes at a time (cores)"
    )
    parser.add_argument("--report-only", action="store_true", help="render README and plots only")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run this one cell
    parser.add_argument("--controller", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    args.seeds = list(dict.fromkeys(args.seeds if args.seeds is not None else scale.seeds))
    args.rows = list(dict.fromkeys(args.rows or default_row_names()))
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scale = SCALES[args.scale]
    paths = paths_for(scale)
    if args.cell:
        return run_one_cell(args, scale, paths)
    if args.report_only:
        print(f"report: {render_report(args, scale, paths)}")
        return 0
    return run_all(args, scale, paths)


if __name__ == "__main__":
    raise SystemExit(main())

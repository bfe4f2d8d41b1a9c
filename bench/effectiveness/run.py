"""The effectiveness benchmark (issues 7 and 12): the paper's comparison tables.

    .venv/bin/python bench/effectiveness/run.py                      # small scale, seeds 0 1 2
    .venv/bin/python bench/effectiveness/run.py --scale smoke        # the harness in minutes
    .venv/bin/python bench/effectiveness/run.py --rows equal ensemble --seeds 0
    .venv/bin/python bench/effectiveness/run.py --report-only        # README from results/
    # the held-out protocol (README, "Protocol"): dev seeds, then a committed freeze, then test
    .venv/bin/python bench/effectiveness/run.py --scale medium --phase dev --rows equal untrained
    .venv/bin/python bench/effectiveness/run.py --scale medium --freeze equal untrained
    git add bench/effectiveness/frozen/medium.json && git commit -m "medium: settings frozen"
    .venv/bin/python bench/effectiveness/run.py --scale medium --phase test --rows equal untrained

Every cell (a row for one seed, or one grid point) runs as its own process and
writes ``results/<cell-key>.json`` when done; a rerun skips the done cells,
resumes the interrupted ones (their jobs and runs are in the store under
``work/``), and Ctrl-C (or SIGTERM) stops every process it started. A
controller process serves the explorations and the transfer runs; a transfer
reads its exploration's policy from the store, so after ``work/`` is lost (a new
checkout) its exploration's result must be moved aside and run again. The README
and figures are rendered from the results present after every finished cell,
with the missing ones marked pending.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
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
    CONTROLLER_KINDS,
    DEV,
    GRID_POINT,
    PHASES,
    ROWS,
    SCALES,
    TEST,
    Cell,
    Scale,
    default_row_names,
    phase_seeds,
    plan,
)
from bench.effectiveness.protocol import (  # noqa: E402
    FrozenFile,
    freeze_problems,
    frozen_document,
    phase_seed_problems,
    problems_before_test,
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
    frozen: Path | None = None  # a held-out scale's frozen settings (protocol.py)

    @property
    def store_uri(self) -> str:
        return self.store.as_uri()


# The committed scales: results in results/ (cell keys start with the scale's name), the
# report where it is read: medium's is the benchmark's README, small's (issue 7) in small/,
# the mask transformer's (issue 14) in mask/.
COMMITTED_REPORTS = {"medium": ".", "small": "small", "medium-mask": "mask"}


def paths_for(scale: Scale, bench_dir: Path = BENCH_DIR, work_root: Path | None = None) -> Paths:
    """The committed scales' results and reports are in the repository; any other scale
    (smoke) keeps everything under ``<work_root>/<scale>/`` (default: the ignored
    ``work/``; a test gives its own folder)."""
    work = (bench_dir / "work" if work_root is None else work_root.resolve()) / scale.name
    data = work / f"data-{scale.images}-{scale.val_images}-{scale.size}-{scale.data_seed}"
    report = COMMITTED_REPORTS.get(scale.name)
    # Frozen settings are committed for the committed scales; the others' (smoke-heldout)
    # are under the ignored work/, where git never sees them: their test phase is refused.
    frozen = work / "frozen.json" if report is None else bench_dir / "frozen" / f"{scale.name}.json"
    return Paths(
        work=work,
        data=data,
        store=work / "store",
        logs=work / "logs",
        results=work / "results" if report is None else bench_dir / "results",
        report=work if report is None else (bench_dir / report).resolve(),
        frozen=frozen,
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
    scale = SCALES[args.scale]
    parts = [".venv/bin/python bench/effectiveness/run.py", f"--scale {args.scale}"]
    if scale.held_out:
        parts.append(f"--phase {args.phase}")
    else:
        parts.append("--seeds " + " ".join(map(str, args.seeds)))
    if sorted(args.rows) != sorted(default_row_names(scale)):
        parts.append("--rows " + " ".join(args.rows))
    return " ".join(parts)


def render_report(args: argparse.Namespace, scale: Scale, paths: Paths) -> Path:
    if scale.held_out:
        return render_held_out_report(args, scale, paths)
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


def render_held_out_report(args: argparse.Namespace, scale: Scale, paths: Paths) -> Path:
    """Both phases' tables (the scale's default rows and any other row with results)."""
    from bench.effectiveness.held_out import PhaseTable, render_held_out

    rows = list(dict.fromkeys([*default_row_names(scale), *args.rows]))
    frozen = read_frozen(paths.frozen)
    frozen_rows = (frozen.document or {}).get("rows") or {}
    phases = {}
    for phase in PHASES:
        seeds = list(phase_seeds(scale, phase))
        # the test table has the frozen rows only: no other row may have test cells
        wanted = [r for r in rows if r in frozen_rows] if phase == TEST and frozen_rows else rows
        cells = plan(scale, wanted, seeds)
        results = done_results(paths.results, scale, cells)
        phases[phase] = PhaseTable(
            phase=phase,
            seeds=seeds,
            cells=cells,
            rows=table(scale, wanted, seeds, results),
            results=results,
        )
    return render_held_out(
        paths.report,
        scale=scale,
        phases=phases,
        frozen=frozen,
        machine=machine(),
    )


# -- the held-out protocol's git facts (protocol.py decides) ---------------------------------------


def read_frozen(path: Path | None) -> FrozenFile:
    """A frozen-settings file and what git says of it: the last commit that changed it, and
    whether the working tree's file is that commit's (no change, not untracked, not ignored)."""
    if path is None or not path.exists():
        return FrozenFile(None, None, False)
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError:
        document = {}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(path.parent), *args, "--", path.name], capture_output=True, text=True
        )

    tracked = git("ls-files", "--error-unmatch").returncode == 0
    log = git("log", "-1", "--format=%H")
    commit = (log.stdout.strip() or None) if tracked and log.returncode == 0 else None
    status = git("status", "--porcelain")
    clean = commit is not None and status.returncode == 0 and not status.stdout.strip()
    return FrozenFile(document, commit, clean)


def freeze(args: argparse.Namespace, scale: Scale, paths: Paths) -> int:
    """Write the frozen settings of ``args.freeze``; committing the file is the user's step."""
    existing = {p.stem for p in Path(paths.results).glob(f"{scale.name}-*.json")}
    problems = freeze_problems(scale, args.freeze, existing)
    if problems:
        print("cannot freeze:\n  " + "\n  ".join(problems))
        return 2
    path = paths.frozen
    previous = json.loads(path.read_text()) if path.exists() else None
    document = frozen_document(
        scale, args.freeze, time.strftime("%Y-%m-%dT%H:%M:%S%z"), previous=previous
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}; commit it, then run --phase test")
    return 0


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


def needs_controller(cells: Sequence[Cell]) -> bool:
    """Whether any of ``cells`` runs through the controller (PBT included: it is a run of
    the service's ``pbt`` strategy)."""
    return any(c.kind in CONTROLLER_KINDS for c in cells)


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
    if scale.held_out:
        problems = phase_seed_problems(scale, args.phase, args.seeds)
        if args.phase == TEST:
            frozen = read_frozen(paths.frozen)
            problems += problems_before_test(scale, args.rows, frozen)
            args.frozen_commit = frozen.commit
        if problems:
            print(f"refusing to run the {args.phase} phase:\n  " + "\n  ".join(problems))
            return 2
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
    for seed in sorted({c.seed for c in todo if c.kind == GRID_POINT or scale.held_out}):
        ensure_proxy_splits(paths.data, seed, scale.proxy_val)
    url, controller = None, None
    if needs_controller(todo):
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
    argv += ["--jobs", str(args.jobs), "--cell", cell.key, "--work", str(paths.work.parent)]
    if scale.held_out:
        argv += ["--phase", args.phase]
    if url:
        argv += ["--controller", url]
    if getattr(args, "frozen_commit", None):
        argv += ["--frozen-commit", args.frozen_commit]
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
            if args.frozen_commit:  # a test cell: the commit whose settings it ran with
                result["frozen_commit"] = args.frozen_commit
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
    parser.add_argument(
        "--phase",
        choices=PHASES,
        default=None,
        help="held-out scales: dev (seeds scored on proxy-val; the default) or test (seeds "
        "scored on val; only rows whose settings are frozen and committed)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="default: the scale's (the phase's)"
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        default=None,
        choices=list(ROWS),
        metavar="ROW",
        help=f"default: the scale's, e.g. {' '.join(default_row_names())}; all: {' '.join(ROWS)}",
    )
    parser.add_argument(
        "--freeze",
        nargs="+",
        choices=list(ROWS),
        metavar="ROW",
        help="held-out scales: record these rows' current settings in frozen/<scale>.json",
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="processes at a time (cores)"
    )
    parser.add_argument("--report-only", action="store_true", help="render README and plots only")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for each scale's data, store and logs (and a smoke scale's results); "
        "default bench/effectiveness/work",
    )
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run this one cell
    parser.add_argument("--controller", help=argparse.SUPPRESS)
    parser.add_argument("--frozen-commit", help=argparse.SUPPRESS)  # internal: a test cell's
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    if scale.held_out:
        args.phase = args.phase or DEV
        default_seeds = phase_seeds(scale, args.phase)
    elif args.phase is not None or args.freeze:
        parser.error(f"scale {scale.name!r} has no dev/test phases (issue 7's protocol)")
    else:
        default_seeds = scale.seeds
    args.seeds = list(dict.fromkeys(args.seeds if args.seeds is not None else default_seeds))
    args.rows = list(dict.fromkeys(args.rows or default_row_names(scale)))
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scale = SCALES[args.scale]
    paths = paths_for(scale, work_root=args.work)
    if args.cell:
        return run_one_cell(args, scale, paths)
    if args.freeze:
        return freeze(args, scale, paths)
    if args.report_only:
        print(f"report: {render_report(args, scale, paths)}")
        return 0
    return run_all(args, scale, paths)


if __name__ == "__main__":
    raise SystemExit(main())

"""PQ evaluation throughput: ours (in memory and from files) against pq_compute and hotcoco.

All evaluators see the same synthetic images with perturbed predictions (drop,
merge, shift, relabel, spurious segments) in one run; each one's PQ is
printed and checked against ``pq_compute`` (All/Things/Stuff and per class,
to 1e-9). The floor for the file-based evaluators is decoding the PNGs alone
with libspng in as many processes.

    .venv/bin/python bench/bench_pq.py                    # 500 images of 480x640
    .venv/bin/python bench/bench_pq.py --images 50 --repeat 1   # a quick look

The data is generated once into ``--data`` (default /tmp/adaseg-bench-pq) and
reused when it already holds the requested set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

WORKERS = 2
# hotcoco's thread pool reads this once, when it first runs: set before importing it.
os.environ.setdefault("RAYON_NUM_THREADS", str(WORKERS))

import numpy as np  # noqa: E402

from trainer_image.data.coco_panoptic import PanopticSplit, write_split  # noqa: E402
from trainer_image.data.panoptic_png import read_panoptic_png  # noqa: E402
from trainer_image.data.synth import synthesize  # noqa: E402
from trainer_image.eval import pq_files  # noqa: E402
from trainer_image.eval.perturb import perturb_prediction  # noqa: E402
from trainer_image.eval.pq import PQEvaluator  # noqa: E402
from trainer_image.eval.pq_files import pq_compute_files  # noqa: E402

GT_SPLIT = "train"
TOLERANCE = 1e-9
PQ_COMPUTE = "panopticapi pq_compute (files, 2 processes)"
HOTCOCO = "hotcoco 1.3.0 PanopticEval (files, 2 threads)"
FLOOR_SPNG = "decode floor: libspng, 1000 PNGs, 2 processes"
FLOOR_IMGREAD = "decode floor: imgread, 1000 PNGs, 2 processes"
FILES = "ours pq_compute_files (files, 2 processes)"
FILES_SPNG = "ours pq_compute_files, libspng decoding"
CLI = "ours `adaseg pq --json` (subprocess, 2 proc.)"
MEMORY = "ours PQEvaluator in memory (1 process)"


# ------------------------------------------------------------------------------ data


def prepare(data: Path, images: int, size: str, seed: int) -> tuple[Path, Path]:
    """Ground truth and predictions under ``data`` (made once); returns their roots."""
    gt_root, pred_root = data / "gt", data / "pred"
    stamp = data / "stamp.json"
    wanted = {"images": images, "size": size, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return gt_root, pred_root
    started = time.perf_counter()
    synthesize(gt_root, images, size, seed, val_images=0, progress=False)
    split = PanopticSplit.from_dir(gt_root, GT_SPLIT)
    category_ids = [c.id for c in split.categories]
    rng = np.random.default_rng(seed + 1)

    def items():
        for record in split.records:
            ids = split.load_panoptic(record, check=False)
            labels = {s.id: s.category_id for s in record.segments}
            pred, pred_labels = perturb_prediction(ids, labels, category_ids, rng)
            black = np.zeros((*ids.shape, 3), np.uint8)
            yield record.image_id, black, pred, {k: (c, False) for k, c in pred_labels.items()}

    write_split(pred_root, GT_SPLIT, split.categories, items(), image_format="png")
    stamp.write_text(json.dumps(wanted))
    print(f"made {images} image pairs of {size} in {time.perf_counter() - started:.0f} s")
    return gt_root, pred_root


def paths(root: Path) -> tuple[str, str]:
    return (
        str(root / "annotations" / f"panoptic_{GT_SPLIT}.json"),
        str(root / "annotations" / f"panoptic_{GT_SPLIT}"),
    )


# ------------------------------------------------------------------------------ evaluators


@contextlib.contextmanager
def quiet():
    """Silence stdout at the file-descriptor level (pq_compute's workers and Rust print)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            with contextlib.redirect_stdout(devnull):
                yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def run_pq_compute(gt: Path, pred: Path) -> dict:
    from panopticapi.evaluation import pq_compute

    gt_json, gt_dir = paths(gt)
    pred_json, pred_dir = paths(pred)
    before = set(multiprocessing.active_children())
    try:
        with quiet():
            return pq_compute(gt_json, pred_json, gt_dir, pred_dir)
    finally:  # pq_compute never closes its pool: end its idle workers
        for worker in set(multiprocessing.active_children()) - before:
            worker.terminate()
            worker.join()


def run_hotcoco(gt: Path, pred: Path) -> dict:
    from hotcoco import panoptic

    gt_json, gt_dir = paths(gt)
    pred_json, pred_dir = paths(pred)
    with quiet():
        evaluator = panoptic.PanopticEval(
            gt_json, pred_json, gt_folder=gt_dir, pred_folder=pred_dir
        )
        evaluator.evaluate()
    return evaluator.results()


def run_files(gt: Path, pred: Path, decoder: str = "best") -> dict:
    """The file path; ``decoder="libspng"`` hides imgread (the forked workers inherit that)."""
    gt_json, gt_dir = paths(gt)
    pred_json, pred_dir = paths(pred)
    saved = pq_files.imgread
    if decoder == "libspng":
        pq_files.imgread = None
    try:
        return pq_compute_files(gt_json, gt_dir, pred_json, pred_dir, workers=WORKERS)
    finally:
        pq_files.imgread = saved


def run_cli(gt: Path, pred: Path) -> dict:
    """The installed ``adaseg pq`` command, interpreter start-up included."""
    gt_json, gt_dir = paths(gt)
    pred_json, pred_dir = paths(pred)
    adaseg = Path(sys.executable).with_name("adaseg")
    out = subprocess.run(
        [str(adaseg), "pq", "--gt-json", gt_json, "--gt-folder", gt_dir]
        + ["--pred-json", pred_json, "--pred-folder", pred_dir, "--json"]
        + ["--workers", str(WORKERS)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out)
    result["per_class"] = {int(k): v for k, v in result["per_class"].items()}
    return result


def _decode_share(task: tuple[str, list[str]]) -> int:
    decoder, files = task
    if decoder == "imgread":
        import imgread

        decode = imgread.load_numpy_from_bytes
    else:
        import pyspng

        decode = pyspng.load
    return sum(decode(Path(name).read_bytes()).shape[0] for name in files)


def run_decode_floor(gt: Path, pred: Path, decoder: str) -> None:
    """Read and decode every PNG in WORKERS processes, and nothing else."""
    files = sorted(str(f) for root in (gt, pred) for f in Path(paths(root)[1]).glob("*.png"))
    shares = [(decoder, files[i :: WORKERS * 4]) for i in range(WORKERS * 4)]
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        sum(pool.imap_unordered(_decode_share, shares))


def _in_memory_server(connection: Connection, gt: Path, pred: Path) -> None:
    """Hold every map decoded (as a trainer holds its validation ground truth) and time only
    the evaluation, once per request. A process of its own: 1,000 decoded maps in the
    benchmark's process would slow down every fork of the file-based evaluators."""
    gt_split = PanopticSplit.from_dir(gt, GT_SPLIT)
    pred_split = PanopticSplit.from_dir(pred, GT_SPLIT)
    pairs = []
    for gt_record, pred_record in zip(gt_split.records, pred_split.records, strict=True):
        pred_segments = [{"id": s.id, "category_id": s.category_id} for s in pred_record.segments]
        pairs.append(
            (
                read_panoptic_png(pred_split.png_path(pred_record)),
                pred_segments,
                read_panoptic_png(gt_split.png_path(gt_record)),
                gt_record.segments,
            )
        )
    connection.send("ready")
    while connection.recv() == "run":
        cpu, wall = time.process_time(), time.perf_counter()
        evaluator = PQEvaluator(gt_split.categories)
        for pred_ids, pred_segments, gt_ids, gt_segments in pairs:
            evaluator.add(pred_ids, pred_segments, gt_ids, gt_segments)
        result = evaluator.result()
        connection.send((time.perf_counter() - wall, time.process_time() - cpu, result))


class InMemory:
    """The in-memory evaluator in its server process; calling it times one evaluation."""

    def __init__(self, gt: Path, pred: Path) -> None:
        context = multiprocessing.get_context("fork")
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_in_memory_server, args=(theirs, gt, pred))
        self.process.start()
        if self.connection.recv() != "ready":
            raise RuntimeError("the in-memory server did not start")

    def __call__(self) -> tuple[float, float, dict]:
        self.connection.send("run")
        return self.connection.recv()

    def close(self) -> None:
        self.connection.send("stop")
        self.process.join()


# ------------------------------------------------------------------------------ checks


def differences(result: dict | None, reference: dict) -> float:
    """Largest absolute difference from pq_compute over All/Things/Stuff and per class.

    hotcoco reports −1.0 per class where pq_compute reports 0.0 for a category
    with no segment; such classes are compared as "both empty".
    """
    if result is None:
        return 0.0
    worst = 0.0
    for group in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq", "n"):
            worst = max(worst, abs(result[group][key] - reference[group][key]))
    for cat_id, ref in reference["per_class"].items():
        ours = result["per_class"][cat_id]
        for key in ("pq", "sq", "rq"):
            value = ours[key]
            if value == -1.0 and ref[key] == 0.0:
                continue
            worst = max(worst, abs(value - ref[key]))
    return worst


def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (pool workers, subprocesses)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function: Callable[[], dict | None]) -> tuple[float, float, dict | None]:
    """(wall seconds, CPU seconds, result) of one call."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    result = function()
    return time.perf_counter() - wall, cpu_seconds() - cpu, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", default="480x640")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per evaluator (best counts)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/adaseg-bench-pq"))
    args = parser.parse_args()

    gt, pred = prepare(args.data, args.images, args.size, args.seed)
    n = args.images
    print(f"{n} image pairs of {args.size}; {WORKERS} processes or threads where parallel;")
    print(f"os.cpu_count() = {os.cpu_count()}; best of {args.repeat} interleaved rounds")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")

    file_based: list[tuple[str, Callable[[], dict | None]]] = [
        (PQ_COMPUTE, lambda: run_pq_compute(gt, pred)),
        (HOTCOCO, lambda: run_hotcoco(gt, pred)),
        (FLOOR_SPNG, lambda: run_decode_floor(gt, pred, "pyspng")),
        (FLOOR_IMGREAD, lambda: run_decode_floor(gt, pred, "imgread")),
        (FILES, lambda: run_files(gt, pred)),
        (FILES_SPNG, lambda: run_files(gt, pred, "libspng")),
        (CLI, lambda: run_cli(gt, pred)),
    ]
    in_memory = InMemory(gt, pred)
    runs: dict[str, list[tuple[float, float, dict | None]]] = {}
    try:
        for _ in range(args.repeat):  # interleaved, so that load changes hit every evaluator
            for name, function in file_based:
                runs.setdefault(name, []).append(timed(function))
            runs.setdefault(MEMORY, []).append(in_memory())  # timed in its own process
    finally:
        in_memory.close()
    rows = [
        (
            name,
            min(wall for wall, _, _ in results),
            statistics.median(wall for wall, _, _ in results),
            min(cpu for _, cpu, _ in results),
            results[-1][2],
        )
        for name, results in runs.items()
    ]
    reference = rows[0][4]
    base_wall, base_cpu = rows[0][1], rows[0][3]
    header = (
        f"{'evaluator':46s} {'best s':>7s} {'median s':>8s} {'img/s':>6s} {'speed-up':>8s}"
        f" {'CPU s':>6s} {'CPU speed-up':>12s} {'PQ (All)':>18s} {'max |diff|':>10s}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for name, best, median, cpu, result in rows:
        diff = differences(result, reference)
        ok &= diff <= TOLERANCE
        pq = f"{result['All']['pq']:.15f}" if result else "-"
        print(
            f"{name:46s} {best:7.3f} {median:8.3f} {n / best:6.0f} {base_wall / best:7.1f}x"
            f" {cpu:6.2f} {base_cpu / cpu:11.1f}x {pq:>18s} {diff:10.1e}"
        )
    wall = {name: best for name, best, _, _, _ in rows}
    cpu = {name: value for name, _, _, value, _ in rows}
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"decoder of the file path: {pq_files.imgread and 'imgread' or 'libspng (pyspng)'}")
    print("ratios by wall clock (by CPU seconds in brackets):")
    for label, numerator, denominator, target in (
        ("in memory vs pq_compute", PQ_COMPUTE, MEMORY, "target >= 20x faster"),
        ("in memory vs hotcoco", HOTCOCO, MEMORY, "target > 1x faster"),
        ("files vs hotcoco", HOTCOCO, FILES, "target > 1x faster"),
        ("files (libspng) vs hotcoco", HOTCOCO, FILES_SPNG, "without imgread"),
        ("files / libspng decode floor", FILES, FLOOR_SPNG, "target <= 1.5x"),
        ("files (libspng) / libspng floor", FILES_SPNG, FLOOR_SPNG, "same decoder as files"),
        ("files / imgread decode floor", FILES, FLOOR_IMGREAD, "same decoder as files"),
    ):
        by_wall = wall[numerator] / wall[denominator]
        by_cpu = cpu[numerator] / cpu[denominator]
        print(f"  {label:30s} {by_wall:6.2f}x  ({by_cpu:.2f}x)   {target}")
    print(f"PQ identical to pq_compute within {TOLERANCE:g}: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

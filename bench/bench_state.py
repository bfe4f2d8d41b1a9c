"""What a run's state costs to keep durable: bytes written and time per round, before and after
the base + log layout, measured in the same run.

The *before* is the controller as of ``--baseline-commit`` (the last commit with the first
state format: one ``state.json`` with the whole history, rewritten on every write), taken
from git into a temporary folder; the *after* is this checkout. Both run the same driver
in their own process: a run on a file store, driven one round at a time by m scripted
workers (every member leased, then every member reported with a small metrics object),
the store wrapped to count the bytes of every write. Per recorded round it prints the
bytes written, the writes, the wall time of the round and the turnover (the report that
completes the round: rewards, Eq. 6, the next draw and the durable writes).

    .venv/bin/python bench/bench_state.py                 # the table in bench/README.md
    .venv/bin/python bench/bench_state.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "5320169"  # main just before the redesign: the v1 state layout

DRIVER = r"""
import json, math, sys, tempfile, time
try:
    from controller_service.contract.store import FileStore
except ImportError:  # the baseline's layout
    from controller_service.store import FileStore
from controller_service.runs import MemberReport, RunRepository, RunSpec

m, n, rounds = (int(value) for value in sys.argv[1:4])
record = set(map(int, sys.argv[4].split(",")))
names = tuple(f"loss{i}" for i in range(n))

class Counting(FileStore):
    bytes = puts = 0
    def put(self, key, data):
        Counting.bytes += len(data); Counting.puts += 1
        super().put(key, data)

store = Counting(tempfile.mkdtemp(prefix="bench-state-"))
repo = RunRepository(store, new_id=lambda: "bench")
repo.create(RunSpec(loss_names=names, population=m, rounds=rounds, seed=1, lease_seconds=3600))

def report(a):
    w = a["weights"]
    losses = {k: 1.0 / (1.0 + 0.3 * v) for k, v in w.items()}
    pq = 40.0 + 10.0 * math.tanh(w[names[0]] - w[names[-1]])
    metrics = {"pq_th": pq, "pq_st": pq, "iterations": 100, "train_seconds": 12.5,
               "images_per_second": 80.0, "eval_seconds": 1.5, "worker": "bench"}
    return repo.report("bench", a["id"], MemberReport(losses=losses, pq=pq,
                       checkpoint_uri=a["checkpoint_uri"], metrics=metrics))

for t in range(rounds + 1):
    size = 1 if t == 0 else m
    b0, p0, s0 = Counting.bytes, Counting.puts, time.perf_counter()
    held = [repo.lease("bench", f"w{j}")["assignment"] for j in range(size)]
    for a in held[:-1]:
        report(a)
    s1 = time.perf_counter()
    report(held[-1])  # completes the round
    s2 = time.perf_counter()
    if t in record:
        print(json.dumps({"round": t, "bytes": Counting.bytes - b0, "puts": Counting.puts - p0,
                          "seconds": s2 - s0, "turnover_s": s2 - s1}), flush=True)
"""


def baseline_tree(commit: str) -> Path:
    """The baseline's ``controller_service`` package, from git, in a temporary folder."""
    target = Path(tempfile.mkdtemp(prefix="bench-state-baseline-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "controller_service"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def measure(tree: Path, m: int, n: int, rounds: int, record: list[int], limit: float) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", DRIVER, str(m), str(n), str(rounds), ",".join(map(str, record))]
    try:
        done = subprocess.run(
            argv, env=env, cwd=tree, capture_output=True, text=True, timeout=limit, check=True
        )
    except subprocess.TimeoutExpired:
        return [{"round": r, "timeout": limit} for r in record]
    return [json.loads(line) for line in done.stdout.splitlines()]


def cell(row: dict) -> str:
    if "timeout" in row:
        return f"not done in {row['timeout']:.0f} s"
    return (
        f"{row['bytes'] / 1e6:.3g} MB / {row['puts']} writes / "
        f"{row['seconds'] * 1000:.0f} ms (turnover {row['turnover_s'] * 1000:.0f} ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-commit", default=BASELINE_COMMIT)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds per measurement")
    args = parser.parse_args()
    before = baseline_tree(args.baseline_commit)
    if args.quick:
        plan = [(8, 3, 3, [1, 3])]
    else:
        plan = [(m, n, 1, [1]) for m in (8, 64, 256, 1024) for n in (3, 10, 64)]
        plan += [(8, n, 100, [1, 100]) for n in (3, 10, 64)] + [(64, 3, 100, [1, 100])]
    print(f"machine: {os.cpu_count()} cores; baseline {args.baseline_commit}; {time.ctime()}")
    print("| m | n | round | before (v1: whole state per write) | after (base + log) | ratio |")
    print("| ---: | ---: | ---: | --- | --- | ---: |")
    for m, n, rounds, record in plan:
        old = measure(before, m, n, rounds, record, args.limit)
        new = measure(REPO, m, n, rounds, record, args.limit)
        for o, w in zip(old, new, strict=True):
            ratio = f"{o['bytes'] / w['bytes']:.1f}x" if "bytes" in o and "bytes" in w else "–"
            print(f"| {m} | {n} | {o['round']} | {cell(o)} | {cell(w)} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()

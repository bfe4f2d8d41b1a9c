"""Dashboard render time on a long run (m = 64 members, T = 200 rounds), against JSON encoding.

Builds one run in the run record's shape: 3 losses whose weights span five
orders of magnitude (centre ~100, semantic ~1, offset ~0.01, each candidate
log-normal around its round's mean), 1 % of members diverged, a few invalid
draws per round, an open round with half its members leased. Then times, in
the same process and interleaved (best and median of ``--repeat``):

* the baseline: ``json.dumps`` of the same run record (history included), the
  work ``GET /v1/runs/{run}`` does to answer;
* ``run page``: :func:`controller_service.ui.pages.run_page` (every chart, table
  and the open round's leases);
* ``runs page`` with 200 runs;
* ``transfer plan``: Eq. 7 for E = T = 200 epochs over 200 real policy snapshots
  (computed once per snapshot count and cached by the router), and ``policy
  page`` with that plan;

and, with ``--browser``, how long headless Chromium takes to load the run page
from a file (navigation start to the load event; Debian's chromium and
chromedriver, as the browser test uses them).

    .venv/bin/python bench/bench_ui.py                 # m = 64, T = 200, 7 repeats
    .venv/bin/python bench/bench_ui.py --browser --plan-rounds 12 50 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller_service.search.policy import Policy, PolicyConfig  # noqa: E402
from controller_service.ui import pages  # noqa: E402
from controller_service.ui.plan import transfer_plan  # noqa: E402

NAMES = ["semantic", "center", "offset"]
SCALE = {"semantic": 1.0, "center": 100.0, "offset": 0.01}
NOW = 1_800_000_000.0


def build_run(m: int, rounds: int, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run record with history, open round) of a run T rounds long with m members."""
    rng = np.random.default_rng(seed)
    history: list[dict[str, Any]] = []
    start = "s3://adaseg/store/runs/bench/checkpoints/init.pt"
    best_pq = 20.0
    for t in range(rounds + 1):
        members = 1 if t == 0 else m
        drift = {n: SCALE[n] * float(np.exp(rng.normal(0, 0.3))) for n in NAMES}
        mean = {n: 1.0 for n in NAMES} if t == 0 else drift
        candidates = []
        for j in range(members):
            weights = {n: mean[n] * float(np.exp(rng.normal(0, 0.5))) for n in NAMES}
            diverged = t > 0 and rng.random() < 0.01
            pq = None if diverged else float(best_pq + rng.normal(0, 2.0))
            candidates.append(
                {
                    "member": j,
                    "weights": weights,
                    "valid": True,
                    "clipped": False,
                    "pq": pq,
                    "losses": None if diverged else {n: float(rng.uniform(0.1, 2)) for n in NAMES},
                    "reward": -1.0 if diverged else float(rng.normal()),
                    "checkpoint_uri": f"s3://adaseg/store/runs/bench/checkpoints/r{t:03d}-m{j:02d}.pt",
                    "diverged": diverged,
                    "reason": "loss is nan" if diverged else None,
                    "metrics": None,
                    "assignment_id": f"r{t:03d}-m{j:02d}-a1",
                    "worker": f"adaseg-trainer-{j}",
                    "attempts": 1,
                }
            )
        invalid = int(rng.integers(0, 3)) if t else 0
        for k in range(invalid):
            bad = {n: -abs(float(rng.normal())) for n in NAMES}
            candidates.append({"member": k, "weights": bad, "valid": False, "reward": -1.0})
        alive = [c for c in candidates if c["valid"] and not c["diverged"]]
        best = max(alive, key=lambda c: (c["pq"], -c["member"]))
        best_pq = max(best_pq, best["pq"])
        history.append(
            {
                "round": t,
                "opened_at": NOW - (rounds - t + 1) * 600.0,
                "completed_at": NOW - (rounds - t) * 600.0,
                "init_checkpoint_uri": start,
                "input_losses": None if t == 0 else history[-1]["candidates"][0]["losses"],
                "mean_weights": mean,
                "candidates": candidates,
                "invalid_draws": invalid,
                "clipped_members": [],
                "best_member": best["member"],
            }
        )
        if t >= 1:
            start = best["checkpoint_uri"]
    record = {
        "id": "bench",
        "name": "bench m=64 T=200",
        "status": "running",
        "failure": None,
        "strategy": "ada-segment",
        "round": rounds + 1,
        "rounds": rounds + 1,
        "population": m,
        "loss_names": NAMES,
        "config": {"sigma": 0.5, "sigma_mode": "relative", "policy_lr": 5e-3, "seed": seed},
        "created_at": NOW - (rounds + 2) * 600.0,
        "updated_at": NOW,
        "init_checkpoint_uri": history[0]["init_checkpoint_uri"],
        "initial_losses": history[0]["candidates"][0]["losses"],
        "best": None,
        "current": None,
        "history": history,
    }
    open_round = {
        "round": rounds + 1,
        "opened_at": NOW - 300.0,
        "init_checkpoint_uri": start,
        "mean_weights": history[-1]["mean_weights"],
        "members": [
            {
                "member": j,
                "status": "leased" if j % 2 else "done",
                "worker": f"adaseg-trainer-{j}",
                "deadline": NOW + 300.0 if j % 2 else None,
                "attempts": 1,
            }
            for j in range(m)
        ],
    }
    return record, open_round


def policy_document(rounds: int, seed: int = 0) -> dict[str, Any]:
    """Snapshots pi^1..pi^T of a real policy (the service's defaults) after T updates."""
    config = PolicyConfig(n_losses=len(NAMES), hidden=16, sigma=0.5, sigma_mode="relative",
                          lr=5e-3, weight_decay=5e-4, steps=1, floor=1e-3)  # fmt: skip
    policy = Policy(config, seed)
    rng = np.random.default_rng(seed)
    snapshots = []
    for t in range(1, rounds + 1):
        losses = list(rng.uniform(0.2, 2.0, size=len(NAMES)))
        draw = policy.sample(policy.mean_weights(losses), 8)
        rewards = list(rng.normal(size=len(draw.candidates) + len(draw.invalid)))
        policy.update(losses, draw.candidates + draw.invalid, rewards)
        snapshots.append({"round": t, **policy.snapshot()})
    return {"format": "adaseg-policy/v1", "loss_names": NAMES, "snapshots": snapshots}


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - began)
    return times, result


def browser_load_seconds(html: str, repeat: int) -> list[float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    work = Path(tempfile.mkdtemp(prefix="adaseg-bench-ui-"))
    page = work / "run.html"
    page.write_text(html)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={work / 'profile'}",
                 "--window-size=1280,900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        out = []
        for _ in range(repeat):
            driver.get(page.as_uri())
            out.append(
                driver.execute_script(
                    "const t = performance.getEntriesByType('navigation')[0];"
                    "return (t.loadEventEnd - t.startTime) / 1000;"
                )
            )
        return out
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--browser", action="store_true", help="also time Chromium's load")
    parser.add_argument(
        "--plan-rounds", type=int, nargs="*", default=[], help="also time the plan for these T"
    )
    args = parser.parse_args()

    record, open_round = build_run(args.members, args.rounds)
    info = {k: v for k, v in record.items() if k != "history"}
    rounds = record["history"]
    summaries = [
        {"id": f"run{k:03d}", "name": f"run {k}", "status": "finished", "strategy": "ada-segment",
         "round": 12, "rounds": 12, "best_pq": 40.0, "created_at": NOW - k, "updated_at": NOW}
        for k in range(200)
    ]  # fmt: skip
    document = policy_document(args.rounds)

    results: dict[str, list[float]] = {
        "json": [],
        "run page": [],
        "runs page": [],
        "transfer plan": [],
        "policy page": [],
    }
    sizes: dict[str, int] = {}
    plan = None
    for _ in range(args.repeat):  # interleaved, so load changes hit every figure
        t, out = timed(lambda: json.dumps(record), 1)
        results["json"] += t
        sizes["json"] = len(out)
        t, out = timed(lambda: pages.run_page(info, rounds, open_round, NOW), 1)
        results["run page"] += t
        sizes["run page"] = len(out.encode())
        t, out = timed(lambda: pages.runs_page(summaries, NOW), 1)
        results["runs page"] += t
        sizes["runs page"] = len(out.encode())
    for _ in range(max(1, args.repeat // 3)):  # the slow one, cached by the router
        t, plan = timed(lambda: transfer_plan(document, rounds[: args.rounds]), 1)
        results["transfer plan"] += t
    for _ in range(args.repeat):
        t, out = timed(lambda: pages.policy_page(info, document, rounds, plan), 1)
        results["policy page"] += t
        sizes["policy page"] = len(out.encode())

    baseline = statistics.median(results["json"])
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"run: m = {args.members}, T = {args.rounds}, {len(NAMES)} losses, "
          f"{sum(len(r['candidates']) for r in rounds)} candidates")  # fmt: skip
    print(f"{'what':<16}{'best ms':>10}{'median ms':>11}{'vs JSON':>9}{'size':>10}")
    for name, times in results.items():
        median = statistics.median(times)
        size = f"{sizes[name] / 1e6:.2f} MB" if name in sizes else ""
        print(f"{name:<16}{min(times) * 1e3:>10.1f}{median * 1e3:>11.1f}"
              f"{median / baseline:>8.1f}×{size:>10}")  # fmt: skip
    if args.browser:
        html = pages.run_page(info, rounds, open_round, NOW)
        loads = browser_load_seconds(html, 3)
        print(f"chromium load of the run page: best {min(loads):.2f} s, "
              f"median {statistics.median(loads):.2f} s")  # fmt: skip
    for t in args.plan_rounds:  # Eq. 7 is O(T^2): how the first policy-page view grows with T
        small_record, _ = build_run(8, t)
        small_document = policy_document(t)
        times, _ = timed(lambda: transfer_plan(small_document, small_record["history"][:t]), 3)  # noqa: B023
        print(f"transfer plan, T = {t}: best {min(times) * 1e3:.1f} ms")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

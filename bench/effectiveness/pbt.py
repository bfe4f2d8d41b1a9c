"""The PBT-like baseline (the paper's Baseline-P): Ada-Segment without the controller.

Same population, rounds, broadcast and trainer as the exploration: round 0 is
the pseudo epoch (all weights 1) from the common initial model; round 1 starts
every member from that initial model, round t+1 from the best member of round
t, optimizer and schedule included. Only the weights differ: instead of the
policy's Eq. 1-2, each member gets the best member's weights of the previous
round times exp(N(0, sigma²)) per loss (an evolution strategy's mutation,
positive by construction and indifferent to the weights' orders of magnitude).
Round 1's parent is the pseudo epoch's all-ones vector.

The members are trained by the real worker code (:class:`trainer_image.jobs.member.Worker`)
in a pool of processes; a local stand-in takes the place of the controller
client and keeps the reports. The state (every round's weights, results and
best member) is a JSON file written after each member, so an interrupted run
resumes without redrawing or retraining what is done.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

STATE_FORMAT = "adaseg-pbt-state/v1"
LEASE_SECONDS = 7 * 24 * 3600.0  # nobody else can take the member: no expiry in practice

log = logging.getLogger("adaseg.pbt")


@dataclass(frozen=True)
class PbtConfig:
    run_id: str  # names the checkpoints in the store (runs/{run_id}/checkpoints/...)
    loss_names: tuple[str, ...]
    population: int
    rounds: int
    sigma: float
    seed: int

    def __post_init__(self) -> None:
        if self.population < 1 or self.rounds < 1:
            raise ValueError(f"population and rounds must be >= 1, got {self}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")


def perturb(
    weights: Mapping[str, float], rng: np.random.Generator, sigma: float
) -> dict[str, float]:
    """``w_i × exp(ε_i)``, ε_i ~ N(0, sigma²), independently per loss."""
    names = list(weights)
    factors = np.exp(rng.normal(0.0, sigma, size=len(names)))
    return {name: float(weights[name] * f) for name, f in zip(names, factors, strict=True)}


def round_rng(seed: int, round_: int) -> np.random.Generator:
    """Each round's draws depend on (seed, round) only: a resumed run draws the same."""
    return np.random.default_rng([seed, round_])


def new_state(config: PbtConfig, init_uri: str) -> dict[str, Any]:
    ones = dict.fromkeys(config.loss_names, 1.0)
    return {
        "format": STATE_FORMAT,
        "config": asdict(config),
        "init_checkpoint_uri": init_uri,
        "rounds": [_round_record(0, [ones], init_uri, ones)],
        "wall_seconds": 0.0,
    }


def _round_record(
    round_: int, weights: list[dict[str, float]], init_uri: str, parent: Mapping[str, float]
) -> dict[str, Any]:
    return {
        "round": round_,
        "parent_weights": dict(parent),
        "init_checkpoint_uri": init_uri,
        "weights": weights,
        "results": [None] * len(weights),
        "best_member": None,
    }


def best_member(record: Mapping[str, Any]) -> int | None:
    """The member with the highest PQ (ties: lowest index); None if none was trained."""
    trained = [
        (result["pq"], -j)
        for j, result in enumerate(record["results"])
        if result is not None and result.get("pq") is not None
    ]
    return -max(trained)[1] if trained else None


def open_next_round(state: dict[str, Any], config: PbtConfig) -> dict[str, Any] | None:
    """Append round t+1 once round t is complete; None after the last round.

    The parent is the best member of the latest round that had one (the
    controller's rule); round 1 restarts from the initial model, as the
    exploration does.
    """
    last = state["rounds"][-1]
    if any(result is None for result in last["results"]):
        raise ValueError(f"round {last['round']} is not complete")
    next_round = last["round"] + 1
    if next_round > config.rounds:
        return None
    parent, start = last["parent_weights"], last["init_checkpoint_uri"]
    for record in reversed(state["rounds"]):
        j = best_member(record)
        if j is not None:
            parent = record["weights"][j]
            start = record["results"][j]["checkpoint_uri"]
            break
    if next_round == 1:
        start = state["init_checkpoint_uri"]
    rng = round_rng(config.seed, next_round)
    weights = [perturb(parent, rng, config.sigma) for _ in range(config.population)]
    record = _round_record(next_round, weights, start, parent)
    state["rounds"].append(record)
    return record


def assignment(config: PbtConfig, record: Mapping[str, Any], member: int, uri_of: Any) -> dict:
    """What the controller would lease for this member (the worker's input)."""
    from controller_service.contract.keys import member_checkpoint_key
    from controller_service.runs.views import schedule_position

    round_ = record["round"]
    epoch, epochs = schedule_position(round_, config.rounds)
    return {
        "id": f"r{round_:03d}-m{member:02d}-a1",
        "round": round_,
        "member": member,
        "weights": dict(record["weights"][member]),
        "init_checkpoint_uri": record["init_checkpoint_uri"],
        "checkpoint_uri": uri_of(member_checkpoint_key(config.run_id, round_, member)),
        "epoch": epoch,
        "epochs": epochs,
        "lease_seconds": LEASE_SECONDS,
    }


def final_best(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The model PBT ends with: the best member of the last round that had one."""
    for record in reversed(state["rounds"]):
        j = best_member(record)
        if j is not None:
            return {"round": record["round"], "member": j, **record["results"][j]}
    return None


def trained_members(state: Mapping[str, Any]) -> int:
    return sum(1 for record in state["rounds"] for r in record["results"] if r is not None)


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=1)
    os.replace(tmp, path)


# -- the members' training, in worker processes -------------------------------------------------


class LocalReports:
    """Stands in for the controller client inside a pool process: keeps the one report."""

    def __init__(self) -> None:
        self.reports: dict[str, dict[str, Any]] = {}

    def heartbeat(self, run_id: str, assignment_id: str) -> dict[str, Any]:
        return {"assignment_id": assignment_id, "state": "leased"}

    def report(
        self,
        run_id: str,
        assignment_id: str,
        losses: Mapping[str, float],
        pq: float,
        checkpoint_uri: str,
        metrics: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.reports[assignment_id] = {
            "losses": dict(losses),
            "pq": float(pq),
            "checkpoint_uri": checkpoint_uri,
            "metrics": dict(metrics or {}),
            "diverged": None,
        }
        return {"state": "accepted"}

    def report_diverged(self, run_id: str, assignment_id: str, reason: str) -> dict[str, Any]:
        self.reports[assignment_id] = {"pq": None, "diverged": reason, "checkpoint_uri": None}
        return {"state": "accepted"}


_WORKER: Any = None  # one per pool process: it keeps the decoded proxy-val ground truth


def _init_process(config: PbtConfig, store_uri: str, data: Any, train: Any) -> None:
    import torch

    from controller_service.contract.store import open_store
    from trainer_image.cli.base import setup_logging
    from trainer_image.jobs.member import Worker, WorkerOptions

    global _WORKER
    setup_logging("info")
    torch.set_num_threads(1)
    options = WorkerOptions(run=config.run_id, data=data, worker_id=f"pbt-{os.getpid()}")
    if train is not None:  # the optimiser settings of the benchmark's scale
        options.train = train
    worker = Worker(LocalReports(), open_store(store_uri), options)
    worker.seed = config.seed
    worker.loss_names = list(config.loss_names)
    _WORKER = worker


def _train_member(task: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    _WORKER.work(task)
    return task["member"], _WORKER.client.reports.pop(task["id"], None)


def run_pbt(
    config: PbtConfig,
    store_uri: str,
    data: Any,
    state_path: Path,
    processes: int,
    progress: Callable[[str], None] = print,
    train: Any = None,
) -> dict[str, Any]:
    """Train every round (resuming from ``state_path``); returns the final state.

    ``data`` is the workers' ``DataOptions`` (the proxy split is carved from
    its ``split`` with the run's seed, as the exploration's workers do); ``train`` their
    ``TrainConfig`` (None: the workers' default).
    """
    from controller_service.contract.keys import init_checkpoint_key
    from controller_service.contract.store import open_store

    store = open_store(store_uri)
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if state.get("format") != STATE_FORMAT or state["config"] != asdict(config):
            raise ValueError(f"{state_path} belongs to another PBT configuration; delete it")
    else:
        state = new_state(config, store.uri_of(init_checkpoint_key(config.run_id)))
        save_state(state_path, state)
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    with context.Pool(
        processes, initializer=_init_process, initargs=(config, store_uri, data, train)
    ) as pool:
        record: dict[str, Any] | None = state["rounds"][-1]
        while record is not None:
            todo = [j for j, r in enumerate(record["results"]) if r is None]
            tasks = [assignment(config, record, j, store.uri_of) for j in todo]
            for member, outcome in pool.imap_unordered(_train_member, tasks):
                if outcome is None:
                    raise RuntimeError(f"round {record['round']} member {member}: no report")
                record["results"][member] = outcome
                state["wall_seconds"] += time.monotonic() - started
                started = time.monotonic()
                save_state(state_path, state)
            record["best_member"] = best_member(record)
            best = record["best_member"]
            pqs = [r["pq"] for r in record["results"]]
            progress(
                f"PBT round {record['round']}/{config.rounds}: PQ {_fmt(pqs)}, best member {best}"
            )
            record = open_next_round(state, config)
            save_state(state_path, state)
    return state


def _fmt(values: Sequence[float | None]) -> str:
    return "[" + ", ".join("div" if v is None else f"{v:.2f}" for v in values) + "]"

"""What each kind of cell runs, through the product's own commands.

Every training is an ``adaseg`` process (``train``, ``transfer``, ``worker``)
or, for the PBT baseline, the worker code in a process pool, on the same
synthetic data, store and schedule; only the source of the loss weights
differs between rows. A cell returns its result dict; the caller writes it.

Store objects are named ``<cell-key>-<config-hash>`` (job ids, run names), so a
cell interrupted half-way resumes its own job, and a changed configuration
never picks up a stale one.

On a held-out scale (``plan.py``) every training gets the scale's lr and its row's head
lr rule, trains on the seed's proxy-train split and is scored on the seed's phase split
(proxy-val for dev seeds, ``val`` for test seeds).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.effectiveness.plan import (
    EXPLORE,
    GRID,
    GRID_POINT,
    NEUTRAL_CENTRE,
    PBT,
    PLAIN_HEADS,
    PSEUDO,
    TRAIN,
    TRANSFER,
    UNTRAINED,
    Cell,
    Scale,
    cell_spec,
    eval_split,
    neutral_grid_point,
    proxy_split_names,
    scale_model,
    spec_hash,
    train_split,
)
from bench.effectiveness.results import new_result, read_result, result_path
from pipelines.local import (
    ChildProcesses,
    adaseg,
    env_with_threads,
    find_or_create_run,
    follow,
    worker_argv,
)

if TYPE_CHECKING:
    from controller_service.contract.client import ControllerClient
    from controller_service.contract.schemas import RunRecord

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Context:
    """Where a cell finds its data, store, controller, logs and the other cells' results."""

    scale: Scale
    data_dir: Path
    store_uri: str
    results_dir: Path
    work_dir: Path
    logs_dir: Path
    children: ChildProcesses
    cells: Mapping[str, Cell]  # the planned cells by key (a cell reads its dependencies')
    controller_url: str | None = None

    def job_id(self, cell: Cell) -> str:
        return f"{cell.key}-{spec_hash(cell_spec(self.scale, cell))}"


def ensure_proxy_splits(data_dir: Path, seed: int, proxy_val: float) -> tuple[str, str]:
    """The workers' proxy split of ``train`` for ``seed``, as two named splits of the
    dataset, so ``adaseg train --split/--val-split`` can train and pick on it (grid search).

    Each is a JSON of its images plus links to the train split's folders; idempotent.
    """
    from trainer_image.data.split import proxy_split
    from trainer_image.jobs.session import open_split

    names = proxy_split_names(seed)
    annotations = data_dir / "annotations"
    if all((annotations / f"panoptic_{n}.json").exists() for n in names):
        return names
    halves = proxy_split(open_split(data_dir, "train"), proxy_val, seed)
    for name, half in zip(names, halves, strict=True):
        for link, target in (
            (annotations / f"panoptic_{name}", "panoptic_train"),
            (data_dir / name, "train"),
        ):
            if not link.is_symlink():
                link.symlink_to(target, target_is_directory=True)
        path = annotations / f"panoptic_{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(half.gt_json()))
        os.replace(tmp, path)
    return names


def model_loss_names(scale: Scale) -> list[str]:
    """The scale's model's loss names, in its order (what runs are created with)."""
    from trainer_image.models.registry import model_loss_names as loss_names

    return loss_names(scale_model(scale))


def evaluate_checkpoint(ctx: Context, cell: Cell, uri: str, threads: int) -> dict[str, float]:
    """PQ of a stored checkpoint on the cell's scoring split (Ada-Segment-A, PBT's best
    model, a held-out grid's pick)."""
    import torch

    from controller_service.contract.store import open_store
    from trainer_image.engine.checkpoint import load_checkpoint
    from trainer_image.eval.evaluate import evaluate_pq
    from trainer_image.jobs.session import model_from_checkpoint, open_split

    torch.set_num_threads(threads)
    model = model_from_checkpoint(load_checkpoint(open_store(ctx.store_uri), uri))
    split = open_split(ctx.data_dir, eval_split(ctx.scale, cell.seed))
    return evaluate_pq(model, split, ctx.scale.batch_size)


def _scores(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {name: metrics.get(name) for name in ("pq", "pq_th", "pq_st", "sq", "rq")}


# -- static trainings ---------------------------------------------------------------------------


def optimiser_flags(scale: Scale, cell: Cell) -> list[str]:
    """The scale's lr and the cell's head lr rule, as every trainer command takes them
    (nothing for issue 7's scales: the trainer's defaults)."""
    flags = [] if scale.lr is None else ["--lr", f"{scale.lr:g}"]
    if cell.params.get("head_lr") == PLAIN_HEADS:
        flags.append("--no-head-lr-scaling")
    return flags


def split_flags(scale: Scale, cell: Cell) -> list[str]:
    """Where a training job trains and is scored (issue 7: all of train, scored on val)."""
    if not scale.held_out:
        return []
    return ["--split", train_split(scale, cell.seed), "--val-split", eval_split(scale, cell.seed)]


def _train_args(ctx: Context, cell: Cell, *extra: str) -> list[str]:
    s = ctx.scale
    return adaseg(
        "train", "--data", str(ctx.data_dir), "--store", ctx.store_uri, "--device", "cpu",
        "--batch-size", str(s.batch_size), "--epochs", str(s.epochs), "--seed", str(cell.seed),
        "--out-id", ctx.job_id(cell), "--log-every", "50", "--model", scale_model(s),
        *optimiser_flags(s, cell), *extra,
    )  # fmt: skip


def _job_metrics(ctx: Context, job_id: str) -> dict[str, Any]:
    from controller_service.contract.keys import transfer_key
    from controller_service.contract.store import open_store

    return open_store(ctx.store_uri).get_json(transfer_key(job_id, "metrics.json"))


def _training_result(ctx: Context, cell: Cell, metrics: Mapping[str, Any], **extra: Any) -> dict:
    return new_result(
        ctx.scale,
        cell,
        **_scores(metrics),
        epochs=len(metrics.get("losses") or []),
        search_epochs=0,
        wall_seconds=metrics.get("wall_seconds"),
        search_wall_seconds=0.0,
        diverged=metrics.get("diverged"),
        weights_history=metrics.get("weights"),
        losses_history=metrics.get("losses"),
        job_id=ctx.job_id(cell),
        **extra,
    )


def run_train(ctx: Context, cell: Cell) -> dict[str, Any]:
    strategy = cell.params["strategy"]
    ctx.children.run(_train_args(ctx, cell, "--strategy", strategy, *split_flags(ctx.scale, cell)))
    metrics = _job_metrics(ctx, ctx.job_id(cell))
    return _training_result(ctx, cell, metrics, strategy=strategy)


def _weights_flag(weights: Mapping[str, float], names: list[str]) -> str:
    return ",".join(f"{weights[name]:g}" for name in names)


def grid_point_weights(ctx: Context, cell: Cell) -> dict[str, float]:
    """A published-centred point's weights, or a neutral point's: its factors on the
    equal-loss normalisation of its seed's pseudo epoch."""
    if cell.params.get("centre") != NEUTRAL_CENTRE:
        return dict(cell.params["weights"])
    (pseudo_key,) = cell.deps
    return neutral_grid_point(
        _dependency(ctx, pseudo_key)["initial_losses"], cell.params["factors"]
    )


def run_grid_point(ctx: Context, cell: Cell) -> dict[str, Any]:
    """One grid point: trained on proxy-train, scored on proxy-val (never on val)."""
    proxy_train, proxy_val = ensure_proxy_splits(ctx.data_dir, cell.seed, ctx.scale.proxy_val)
    weights = grid_point_weights(ctx, cell)
    flag = _weights_flag(weights, model_loss_names(ctx.scale))
    ctx.children.run(
        _train_args(
            ctx, cell, "--strategy", "fixed", "--weights", flag, "--split", proxy_train,
            "--val-split", proxy_val,
        )
    )  # fmt: skip
    metrics = _job_metrics(ctx, ctx.job_id(cell))
    return _training_result(
        ctx, cell, metrics, weights=weights, split=proxy_train,
        final_checkpoint=metrics.get("final_checkpoint"),
    )  # fmt: skip


def pick_grid_point(points: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The grid point with the best proxy-val PQ (diverged points never; ties: grid order)."""
    trained = [p for p in points if p.get("pq") is not None]
    if not trained:
        raise RuntimeError("every grid point diverged")
    return max(trained, key=lambda p: p["pq"])


def run_grid(ctx: Context, cell: Cell) -> dict[str, Any]:
    points = [_dependency(ctx, key) for key in cell.deps]
    best = pick_grid_point(points)
    grid = [{"weights": p["weights"], "proxy_val_pq": p["pq"]} for p in points]
    if ctx.scale.held_out:
        return _held_out_grid(ctx, cell, points, best, grid)
    flag = _weights_flag(best["weights"], model_loss_names(ctx.scale))
    ctx.children.run(_train_args(ctx, cell, "--strategy", "fixed", "--weights", flag))
    metrics = _job_metrics(ctx, ctx.job_id(cell))
    result = _training_result(ctx, cell, metrics, weights=best["weights"], grid=grid)
    result["search_epochs"] = sum(p["epochs"] for p in points)
    result["search_wall_seconds"] = sum(p["wall_seconds"] or 0.0 for p in points)
    return result


def _held_out_grid(
    ctx: Context,
    cell: Cell,
    points: list[dict[str, Any]],
    best: Mapping[str, Any],
    grid: list[dict[str, Any]],
) -> dict[str, Any]:
    """The picked point's own model (trained on proxy-train like every row), scored on the
    cell's split; its epochs are the row's own, the other points' its search."""
    if eval_split(ctx.scale, cell.seed) == proxy_split_names(cell.seed)[1]:
        scores = _scores(best)  # a dev seed: the pick is scored where it was picked
    else:
        scores = evaluate_checkpoint(ctx, cell, best["final_checkpoint"], 1)
    others = [p for p in points if p is not best]
    return new_result(
        ctx.scale,
        cell,
        **_scores(scores),
        epochs=best["epochs"],
        search_epochs=sum(p["epochs"] for p in others),
        wall_seconds=best["wall_seconds"],
        search_wall_seconds=sum(p["wall_seconds"] or 0.0 for p in others),
        diverged=None,
        weights=best["weights"],
        weights_history=best.get("weights_history"),
        losses_history=best.get("losses_history"),
        picked=best["key"],
        grid=grid,
    )


def _dependency(ctx: Context, key: str) -> dict[str, Any]:
    """The current result of the cell ``key`` (the scheduler ran it first)."""
    result = read_result(ctx.results_dir, key, spec_hash(cell_spec(ctx.scale, ctx.cells[key])))
    if result is None:
        raise RuntimeError(f"cell {key} has no current result; run it first")
    return result


# -- the exploration and the transfer runs -------------------------------------------------------


def _client(ctx: Context) -> ControllerClient:
    from controller_service.contract.client import ControllerClient

    if ctx.controller_url is None:
        raise RuntimeError("this cell needs the controller (--controller URL)")
    client = ControllerClient(ctx.controller_url)
    client.wait_ready(timeout=60)
    return client


def _require_run(ctx: Context, key: str, run_id: str) -> None:
    """Wait for the controller, then check it holds ``key``'s run. The run's policy lives in
    the work folder's store, not in the result file: after that folder is lost (a new
    checkout) the result still counts as done, and a transfer would fail on a bare 404."""
    from controller_service.contract.client import NotFound

    client = _client(ctx)
    try:
        client.get_run(run_id)
    except NotFound:
        path = result_path(ctx.results_dir, key)
        raise RuntimeError(
            f"cell {key}'s run {run_id} is not in the store {ctx.store_uri} (a new work "
            f"folder?): move {path} aside to run that cell again"
        ) from None
    finally:
        client.close()


def run_options(cell: Cell) -> dict[str, Any]:
    """The POST /v1/runs options of a cell's run: an Ada-Segment variant changes the paper's
    settings (``PAPER_SETTINGS``); another strategy (PBT) takes its own options as given."""
    from controller_service.runs import PAPER_SETTINGS

    if cell.kind == PBT:
        return {"strategy": "pbt", "sigma": float(cell.params["sigma"])}
    options = dict(cell.params["run_options"])
    if options.get("strategy", "ada-segment") != "ada-segment":
        return options
    return {**PAPER_SETTINGS, **options}


def _run(ctx: Context, cell: Cell, client: ControllerClient) -> RunRecord:
    """The cell's controller run, created on first use (a resumed benchmark finds it)."""
    s = ctx.scale
    run, _ = find_or_create_run(
        client,
        ctx.job_id(cell),
        model_loss_names(ctx.scale),
        population=s.population,
        rounds=s.rounds,
        seed=cell.seed,
        **run_options(cell),
    )
    return run


def _with_history(client: ControllerClient, run_id: str) -> dict[str, Any]:
    return client.get_run(run_id, history=True).model_dump(mode="json")


def round_summaries(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per round: the policy's mean λ (none without a policy), each member's λ, outcome and
    PQ, the best member (an index into ``members``) and the strategy's own summary (PBT: the
    parent's weights)."""
    return [
        {
            "round": item["round"],
            "mean_weights": item["mean_weights"],
            "input_losses": item["input_losses"],
            "best_member": item["best_member"],
            "members": [
                {
                    "weights": c["weights"],
                    "outcome": c["outcome"],
                    "pq": c["pq"],
                    "reward": c["reward"],
                    "clipped": c["clipped"],
                }
                for c in item["candidates"]
            ],
            "invalid_draws": item["invalid_draws"],
            "strategy": item["strategy"],
        }
        for item in run["history"]
    ]


def _round_seconds(run: Mapping[str, Any]) -> float:
    """Wall time of the exploration: the rounds' open-to-complete times, summed (gaps
    while the benchmark was stopped are left out)."""
    return sum(item["completed_at"] - item["opened_at"] for item in run["history"])


def _worker_argv(ctx: Context, cell: Cell, run_id: str, worker_id: str) -> list[str]:
    """A worker that keeps its name across restarts, so a resumed benchmark gets its
    own unfinished lease back at once instead of waiting for it to expire."""
    s = ctx.scale
    held_out = ["--proxy-val", f"{s.proxy_val:g}"] if s.held_out else []
    assert ctx.controller_url is not None
    return worker_argv(
        ctx.controller_url, run_id, ctx.data_dir, ctx.store_uri, worker_id, device="cpu",
        batch_size=s.batch_size, log_every=50, model=scale_model(s),
    ) + [*optimiser_flags(s, cell), *held_out]  # fmt: skip


def run_explore(ctx: Context, cell: Cell) -> dict[str, Any]:
    """A whole controller run (Ada-Segment-A, or PBT through the service's ``pbt``
    strategy): m members × T rounds on the scale's workers, then its best model scored."""
    client = _client(ctx)
    run = _run(ctx, cell, client)
    print(f"{cell.kind} run {run.id} ({run.status}, round {run.round})", flush=True)
    if run.status == "running":
        env = env_with_threads(1)
        workers = [
            ctx.children.start(
                _worker_argv(ctx, cell, run.id, f"{cell.key}-w{i}"),
                log=ctx.logs_dir / f"{cell.key}-worker-{i}.log",
                env=env,
            )
            for i in range(ctx.scale.workers)
        ]
        follow(client, run.id, alive=lambda: any(w.poll() is None for w in workers), interval=2)
    record = _with_history(client, run.id)
    if record["status"] != "finished":
        raise RuntimeError(f"run {run.id} {record['status']}: {record['failure']}")
    best = record["best"]
    scores = evaluate_checkpoint(ctx, cell, best["checkpoint_uri"], ctx.scale.workers)
    trained = sum(
        1 for item in record["history"] for c in item["candidates"] if c["outcome"] != "failed"
    )
    return new_result(
        ctx.scale,
        cell,
        **scores,
        epochs=trained,
        search_epochs=0,
        wall_seconds=round(_round_seconds(record), 3),
        search_wall_seconds=0.0,
        diverged=None,
        run_id=record["id"],
        run_config=record["config"],
        initial_losses=record["initial_losses"],
        best={k: best[k] for k in ("round", "member", "pq", "weights")},
        rounds=round_summaries(record),
    )


def run_transfer(ctx: Context, cell: Cell) -> dict[str, Any]:
    (explore_key,) = cell.deps
    explore = _dependency(ctx, explore_key)
    _require_run(ctx, explore_key, explore["run_id"])
    s = ctx.scale
    ctx.children.run(
        adaseg(
            "transfer", "--controller", ctx.controller_url, "--policy-run", explore["run_id"],
            "--mode", cell.params["mode"], "--data", str(ctx.data_dir), "--store", ctx.store_uri,
            "--device", "cpu", "--batch-size", str(s.batch_size), "--epochs", str(s.epochs),
            "--seed", str(cell.seed), "--transfer-id", ctx.job_id(cell), "--log-every", "50",
            "--model", scale_model(s), *optimiser_flags(s, cell), *split_flags(s, cell),
            "--first-epoch", cell.params.get("first_epoch", "equal"),
        )
    )  # fmt: skip
    metrics = _job_metrics(ctx, ctx.job_id(cell))
    result = _training_result(
        ctx, cell, metrics, mode=cell.params["mode"], policy_run=explore["run_id"]
    )
    result["clipped"] = metrics.get("clipped")
    result["search_epochs"] = explore["epochs"]
    result["search_wall_seconds"] = explore["wall_seconds"]
    return result


def run_untrained(ctx: Context, cell: Cell) -> dict[str, Any]:
    """The round-1 mean λ, π⁰(l¹)/l¹ (the policy before any Eq. 6 update, on the pseudo
    epoch's losses), held fixed for a whole training: the controller minus its learning.
    Its search is the pseudo epoch alone (issue 7 read it from the whole exploration; a
    held-out scale runs the pseudo epoch alone)."""
    (source_key,) = cell.deps
    source = _dependency(ctx, source_key)
    if source["kind"] == PSEUDO:
        weights = source["mean_weights"]
    else:
        weights = next(r for r in source["rounds"] if r["round"] == 1)["mean_weights"]
    flag = _weights_flag(weights, model_loss_names(ctx.scale))
    ctx.children.run(
        _train_args(
            ctx, cell, "--strategy", "fixed", "--weights", flag, *split_flags(ctx.scale, cell)
        )
    )
    metrics = _job_metrics(ctx, ctx.job_id(cell))
    result = _training_result(ctx, cell, metrics, weights=weights, policy_run=source["run_id"])
    result["search_epochs"] = 1
    return result


def run_pseudo(ctx: Context, cell: Cell) -> dict[str, Any]:
    """Round 0 of a controller run alone: one worker trains the pseudo epoch (weights 1,
    from the common initial model, at round 1's place in the schedule) and stops; the
    controller then holds l¹ and round 1's mean λ = π⁰(l¹)/l¹. The run stays open at round
    1 (nothing leases it again); an exploration is a run of its own."""
    client = _client(ctx)
    run = _run(ctx, cell, client)
    if run.round == 0 and run.status == "running":
        argv = _worker_argv(ctx, cell, run.id, f"{cell.key}-w0") + ["--max-assignments", "1"]
        env = env_with_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        worker = ctx.children.start(argv, log=ctx.logs_dir / f"{cell.key}-worker.log", env=env)
        while True:
            run = client.get_run(run.id)
            if run.round >= 1 or run.status != "running":
                break
            if worker.poll() is not None:
                raise RuntimeError(f"the pseudo-epoch worker exited ({worker.returncode})")
            time.sleep(1.0)
        worker.wait(timeout=60)
    record = _with_history(client, run.id)
    if record["status"] == "failed" or not record["history"] or record["current"] is None:
        raise RuntimeError(f"run {run.id} has no round 1: {record['failure']}")
    pseudo = record["history"][0]
    (member,) = pseudo["candidates"]
    return new_result(
        ctx.scale,
        cell,
        pq=member["pq"],  # on proxy-val, after the pseudo epoch
        pq_th=None,
        pq_st=None,
        epochs=1,
        search_epochs=0,
        wall_seconds=round(pseudo["completed_at"] - pseudo["opened_at"], 3),
        search_wall_seconds=0.0,
        diverged=None,
        run_id=record["id"],
        run_config=record["config"],
        initial_losses=record["initial_losses"],
        mean_weights=record["current"]["mean_weights"],
    )


RUNNERS = {
    TRAIN: run_train,
    GRID_POINT: run_grid_point,
    GRID: run_grid,
    EXPLORE: run_explore,
    TRANSFER: run_transfer,
    PBT: run_explore,  # the service's pbt strategy: a controller run like Ada-Segment-A's
    UNTRAINED: run_untrained,
    PSEUDO: run_pseudo,
}


def code_fingerprint(repo: Path = REPO) -> str:
    """A hash of the trainer's and controller's sources: results made by different code
    (the product changed while the benchmark ran) can be told apart in the report."""
    digest = hashlib.sha256()
    for package in ("trainer_image", "controller_service"):
        for path in sorted((repo / package).rglob("*.py")):
            digest.update(str(path.relative_to(repo)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def run_cell(ctx: Context, cell: Cell) -> dict[str, Any]:
    started = time.monotonic()
    code = code_fingerprint()
    result = RUNNERS[cell.kind](ctx, cell)
    result["code"] = code
    result["cell_seconds"] = round(time.monotonic() - started, 3)
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return result

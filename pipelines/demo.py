"""`adaseg demo`: the whole Ada-Segment method on one machine, then a comparison table.

Phases, all on the embedded defaults (file store under ``outputs/``, a local
controller process, local worker processes, synthetic COCO-panoptic data):

1. synthetic data (skipped when present);
2. the exploration: round-0 pseudo epoch and ``rounds`` rounds of a population
   trained by worker processes leasing from the controller;
3. a transfer run that trains a fresh model with the policy ensemble (Eq. 7);
4. a baseline with equal weights on the same budget as the transfer run;
5. the best model of the exploration (Ada-Segment-A) evaluated on the same
   validation split.

Everything lives in the store, named after a hash of the configuration, so a
second ``adaseg demo`` with the same flags resumes where the first stopped
(runs continue, finished transfer runs are read back). Ctrl-C stops every
process the demo started.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from controller_service.contract.keys import run_eval_key, transfer_key
from pipelines.local import (
    Busy,
    ChildProcesses,
    adaseg,
    child_processes,
    env_with_threads,
    exclusive,
    find_or_create_run,
    follow,
    start_controller,
    stop_signals_as_interrupt,
    train_argv,
    transfer_argv,
    worker_argv,
)
from trainer_image import DEFAULT_MODEL


@dataclass(frozen=True)
class DemoConfig:
    """Every size of the demo; the hash of the sizes names its runs in the store.

    The defaults are the small scale of ``bench/effectiveness`` (its data, population,
    schedule and seed 0), so the baseline is that benchmark's seed-0 cell; the controller
    rows run the service's current defaults, which that table predates (README, "Two
    commands").
    """

    images: int = 1280
    val_images: int = 400
    size: int = 64
    data_seed: int = 0
    population: int = 4
    rounds: int = 6
    batch_size: int = 16
    transfer_epochs: int = 6
    seed: int = 0
    model: str = DEFAULT_MODEL  # any registered model (`adaseg models`), at its tiny preset

    def tag(self) -> str:
        sizes = asdict(self)
        if self.model == DEFAULT_MODEL:  # the default keeps the tag it always had
            del sizes["model"]
        # and what the demo does with them: a run finished under other defaults is not resumed
        sizes["method"] = method_settings()
        digest = hashlib.sha256(json.dumps(sizes, sort_keys=True).encode()).hexdigest()
        return f"demo-{digest[:10]}"


# The demo transfers on the data it searched, as the combined pipeline does by default.
TRANSFER_FIRST_EPOCH = "policy"


def method_settings() -> dict[str, Any]:
    """The controller's run defaults and the transfer's epoch-1 rule, as the demo uses them."""
    from controller_service.contract.schemas import CreateRunRequest

    defaults = CreateRunRequest(loss_names=["x"]).model_dump(exclude={"loss_names", "seed", "name"})
    return {"run": defaults, "transfer_first_epoch": TRANSFER_FIRST_EPOCH}


QUICK = DemoConfig(images=64, val_images=16, size=48, population=2, rounds=2, transfer_epochs=3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    base = DemoConfig()
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in minutes")
    parser.add_argument("--out", default="outputs", help="folder for data, store, logs and plots")
    parser.add_argument("--controller", help="use this controller URL instead of starting one")
    parser.add_argument("--store", help="store URI (default: file://OUT/store)")
    parser.add_argument("--workers", type=_positive, help="worker processes (default: cores)")
    parser.add_argument("--model", default=None, help=f"default {DEFAULT_MODEL} (`adaseg models`)")
    for field, default in asdict(base).items():
        if field == "model":
            continue
        parser.add_argument(
            f"--{field.replace('_', '-')}",
            type=_positive if field not in {"data_seed", "seed"} else _non_negative,
            default=None,
            help=f"default {default} ({getattr(QUICK, field)} with --quick)",
        )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    base = QUICK if args.quick else DemoConfig()
    overrides = {
        field: getattr(args, field) for field in asdict(base) if getattr(args, field) is not None
    }
    config = DemoConfig(**{**asdict(base), **overrides})
    if config.population < 2:
        raise SystemExit("adaseg demo: --population must be at least 2")
    return config


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    out = Path(args.out).resolve()
    workers = args.workers or min(config.population, os.cpu_count() or 1)
    store_uri = args.store or (out / "store").as_uri()
    # SIGTERM and SIGHUP too (a parent or a closed terminal): every child is stopped on the
    # way out, and the children die with the demo even when it is killed (kill -9)
    try:
        with (
            exclusive(out / ".demo.lock", f"the demo's folder {out}"),
            stop_signals_as_interrupt(),
            child_processes() as children,
        ):
            session = DemoSession(config, out, store_uri, workers, children)
            try:
                session.run(controller_url=args.controller)
            except KeyboardInterrupt:
                print("\ninterrupted: stopping every process; run the same command to resume")
                return 130
    except Busy as exc:
        print(f"adaseg demo: {exc}", file=sys.stderr)
        return 2
    return 0


def metrics_key(tag: str, name: str) -> str:
    return transfer_key(f"{tag}-{name}", "metrics.json")


class DemoSession:
    """The phases of one demo, each skipped when its result is already in the store."""

    def __init__(
        self,
        config: DemoConfig,
        out: Path,
        store_uri: str,
        workers: int,
        children: ChildProcesses,
    ) -> None:
        from controller_service.contract.store import open_store

        self.config = config
        self.out = out
        self.tag = config.tag()
        self.store_uri = store_uri
        self.store = open_store(store_uri)
        self.workers = workers
        self.children = children
        self.data_dir = out / "data" / f"synth-{config.images}-{config.size}-{config.data_seed}"
        self.logs = out / "logs" / self.tag
        self.plots = out / "plots" / self.tag
        self.timings_path = out / self.tag / "timings.json"

    # -- bookkeeping -------------------------------------------------------------------------
    def _timings(self) -> dict[str, float]:
        if self.timings_path.exists():
            return json.loads(self.timings_path.read_text())
        return {}

    def _add_time(self, phase: str, seconds: float) -> None:
        timings = self._timings()
        timings[phase] = timings.get(phase, 0.0) + seconds
        self.timings_path.parent.mkdir(parents=True, exist_ok=True)
        self.timings_path.write_text(json.dumps(timings, indent=1))

    @staticmethod
    def _phase(title: str) -> None:
        print(f"\n=== {title} ===", flush=True)

    # -- phases ------------------------------------------------------------------------------
    def run(self, controller_url: str | None) -> None:
        print(f"adaseg demo {self.tag}: store {self.store_uri}, outputs under {self.out}")
        self.ensure_data()
        url = controller_url or self.start_controller()
        from controller_service.contract.client import ControllerClient

        client = ControllerClient(url)
        client.wait_ready(timeout=60)
        run = self.explore(client, url)
        self.transfer(url, run.id)
        self.baseline()
        self.evaluate_best(run)
        self.report(client.get_run(run.id, history=True))

    def ensure_data(self) -> None:
        self._phase("1/5 synthetic COCO-panoptic data")
        marker = self.data_dir / "annotations" / "panoptic_val.json"
        if marker.exists():
            print(f"reusing {self.data_dir}")
            return
        c = self.config
        self.children.run(
            adaseg(
                "data", "synth", "--out", str(self.data_dir), "--images", str(c.images),
                "--val-images", str(c.val_images), "--size", str(c.size),
                "--seed", str(c.data_seed),
            )
        )  # fmt: skip

    def start_controller(self) -> str:
        log = self.logs / "controller.log"
        controller = start_controller(self.store_uri, log_path=log, children=self.children)
        print(f"controller on {controller.url} (log: {log})")
        print(f"dashboard: {controller.url}/ui/")
        return controller.url

    def explore(self, client: Any, url: str) -> Any:
        self._phase("2/5 exploration: pseudo epoch + rounds of the population")
        c = self.config
        from trainer_image.models.registry import model_loss_names

        loss_names = model_loss_names(c.model)
        run, created = find_or_create_run(
            client, self.tag, loss_names, population=c.population, rounds=c.rounds, seed=c.seed
        )
        if created:
            print(f"created run {run.id}: population {c.population}, {c.rounds} rounds")
        else:
            print(f"resuming run {run.id} (round {run.round}/{run.rounds})")
        if run.status == "finished":
            print("exploration already finished")
            return run
        env = env_with_threads(max(1, (os.cpu_count() or 1) // self.workers))
        workers = [
            self.children.start(
                worker_argv(
                    url,
                    run.id,
                    self.data_dir,
                    self.store_uri,
                    f"demo-worker-{i}",
                    device="cpu",
                    batch_size=c.batch_size,
                    model=c.model,
                ),
                log=self.logs / f"worker-{i}.log",
                env=env,
            )  # fmt: skip
            for i in range(self.workers)
        ]
        print(f"{self.workers} worker processes, logs in {self.logs}")
        started = time.monotonic()
        run = follow(client, run.id, alive=lambda: any(p.poll() is None for p in workers))
        self._add_time("exploration", time.monotonic() - started)
        return run

    def transfer(self, url: str, run_id: str) -> None:
        self._phase("3/5 transfer run with the policy ensemble (Eq. 7)")
        if self.store.exists(metrics_key(self.tag, "ensemble")):
            print("already done")
            return
        started = time.monotonic()
        c = self.config
        self.children.run(
            transfer_argv(
                url, run_id, self.data_dir, self.store_uri, c.transfer_epochs, mode="ensemble",
                transfer_id=f"{self.tag}-ensemble", device="cpu", batch_size=c.batch_size,
                seed=c.seed, model=c.model, first_epoch=TRANSFER_FIRST_EPOCH,
            ),
            stdout=subprocess.DEVNULL,  # the metrics JSON it prints is in the store
            env=env_with_threads(1),
        )  # fmt: skip
        self._add_time("ensemble", time.monotonic() - started)

    def baseline(self) -> None:
        self._phase("4/5 baseline: equal weights, same budget")
        if self.store.exists(metrics_key(self.tag, "equal")):
            print("already done")
            return
        started = time.monotonic()
        c = self.config
        self.children.run(
            train_argv(
                "equal", self.data_dir, self.store_uri, c.transfer_epochs,
                out_id=f"{self.tag}-equal", device="cpu", batch_size=c.batch_size, seed=c.seed,
                model=c.model,
            ),
            stdout=subprocess.DEVNULL,  # the metrics JSON it prints is in the store
            env=env_with_threads(1),
        )  # fmt: skip
        self._add_time("equal", time.monotonic() - started)

    def _val_split(self) -> Any:
        from trainer_image.jobs.session import open_split

        return open_split(self.data_dir, "val")

    def _best_model(self, run: dict[str, Any]) -> Any:
        from trainer_image.engine.checkpoint import load_checkpoint
        from trainer_image.jobs.session import model_from_checkpoint

        return model_from_checkpoint(load_checkpoint(self.store, run.best.checkpoint_uri))

    def evaluate_best(self, run: dict[str, Any]) -> None:
        """Ada-Segment-A: the exploration's best model on the same validation split."""
        self._phase("5/5 Ada-Segment-A: the exploration's best model on the validation split")
        key = eval_key(run.id)
        if self.store.exists(key):
            print("already done")
            return
        from trainer_image.eval.evaluate import evaluate_pq

        metrics = evaluate_pq(self._best_model(run), self._val_split(), self.config.batch_size)
        metrics.update(checkpoint_uri=run.best.checkpoint_uri, run=run.id, split="val")
        self.store.put_json(key, metrics)

    def report(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        """Print the comparison table, save the plots, return the rows (for tests)."""
        timings = self._timings()
        c = self.config
        explore_epochs = 1 + c.population * c.rounds
        rows = [
            self._row("baseline (equal weights)", metrics_key(self.tag, "equal"), timings, "equal",
                      f"{c.transfer_epochs} epochs"),
            self._row("Ada-Segment-A (best of exploration)", eval_key(run.id), timings,
                      "exploration", f"{explore_epochs} intervals"),
            self._row("Ada-Segment (transfer, ensemble)", metrics_key(self.tag, "ensemble"),
                      timings, "ensemble", f"{c.transfer_epochs} epochs + policy"),
        ]  # fmt: skip
        print("\nPQ on the validation split (%):")
        print(format_table(rows))
        from pipelines.plots import plot_pq, plot_predictions, plot_weights

        saved = [
            plot_weights(run, self.plots / "weights_per_round.png"),
            plot_pq(run, self.plots / "pq_per_round.png"),
            plot_predictions(self._prediction_samples(run), self.plots / "predictions.png"),
        ]
        print("\nplots:\n" + "\n".join(f"  {path}" for path in saved))
        print(f"store: {self.store_uri} (run {run.id}, transfers {self.tag}-*)")
        return rows

    def _row(
        self, name: str, key: str, timings: dict[str, float], phase: str, budget: str
    ) -> dict[str, Any]:
        metrics = self.store.get_json(key)
        return {
            "method": name,
            "pq": metrics["pq"],
            "pq_th": metrics["pq_th"],
            "pq_st": metrics["pq_st"],
            "wall_s": timings.get(phase),
            "budget": budget,
            "source": self.store.uri_of(key),
        }

    def _prediction_samples(self, run: dict[str, Any], count: int = 3) -> list[tuple[Any, ...]]:
        """(image, ground truth, prediction of the best model) for the first validation images."""
        from trainer_image.data.loader import normalize_image

        split = self._val_split()
        model = self._best_model(run)
        samples = []
        for record in split.records[:count]:
            image = split.load_image(record)
            prediction = model.predict(normalize_image(image).unsqueeze(0))[0]
            samples.append((image, split.load_panoptic(record), prediction.ids.cpu().numpy()))
        return samples


def eval_key(run_id: str) -> str:
    """Where the demo stores the validation PQ of a run's best checkpoint."""
    return run_eval_key(run_id, "val")


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table a person can read in a terminal."""
    header = f"{'method':<38} {'PQ':>6} {'PQ_th':>6} {'PQ_st':>6} {'wall':>8}  budget"
    lines = [header, "-" * len(header)]
    for row in rows:
        wall = f"{row['wall_s']:.0f}s" if row["wall_s"] is not None else "-"
        lines.append(
            f"{row['method']:<38} {row['pq']:6.2f} {row['pq_th']:6.2f} {row['pq_st']:6.2f} "
            f"{wall:>8}  {row['budget']}"
        )
    return "\n".join(lines)

"""Epoch jobs: a fresh model trained for E epochs with pluggable loss weights, then evaluated.

One job (:func:`run_job`) serves ``adaseg transfer`` (weights from a finished
run's policy, ``jobs/transfer.py``) and ``adaseg train`` (a static strategy,
``jobs/train.py``), so the demo and the benchmark compare like with like: same
data, schedule, evaluation and metrics file, only the :class:`WeightSource`
differs.

Data parallel with torchrun: every rank trains its slice of each global batch
(DDP averages gradients), the per-epoch loss means are all-reduced, rank 0
alone asks a controller for weights (and broadcasts them) and writes to the
store. Resumable: an existing ``metrics.json`` means done; otherwise ``last.pt``
(written after every epoch by a :class:`~trainer_image.engine.hooks.CheckpointHook`)
is resumed from.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from controller_service.contract import keys
from controller_service.contract.store import ObjectStore
from trainer_image import DEFAULT_MODEL
from trainer_image.engine.batches import interval_batches
from trainer_image.engine.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from trainer_image.engine.config import TrainConfig
from trainer_image.engine.hooks import (
    CheckpointHook,
    HookBase,
    IntervalState,
    ProgressLogger,
    StopHook,
)
from trainer_image.engine.loop import Trainer
from trainer_image.eval.evaluate import evaluate_pq
from trainer_image.jobs.distributed import Distributed
from trainer_image.jobs.ending import Ending
from trainer_image.jobs.session import (
    DataOptions,
    derive_seed,
    fresh_model,
    open_split,
    train_loader,
)
from trainer_image.weighting.base import WeightingStrategy
from trainer_image.weighting.fixed import FixedWeights

log = logging.getLogger("adaseg.transfer")

METRICS = "metrics.json"
FINAL = "final.pt"
LAST = "last.pt"


class WeightSource(Protocol):
    """Where an epoch's loss weights come from."""

    # True: only rank 0 may ask (a controller); its answer is broadcast as fixed weights.
    rank0_only: bool
    # The strategy that lives across epochs (its parameters train with the model, its state
    # is in last.pt); None when every epoch gets a new one.
    kept: WeightingStrategy | None
    # Per epoch, the losses the controller clipped to its floor (transfer only; else None).
    clipped: list[list[str]] | None

    def strategy(self, epoch: int, previous_losses: Mapping[str, float] | None) -> Any:
        """The weighting strategy of epoch ``epoch`` (1-based), given l^{epoch-1}."""
        ...


@dataclass
class JobOptions:
    """One training job: a fresh model trained for ``epochs`` epochs, evaluated on ``val_split``."""

    job_id: str
    data: DataOptions
    epochs: int
    iterations_per_epoch: int | None = None
    device: str = "auto"
    model: str = DEFAULT_MODEL
    model_config: Mapping[str, Any] | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    val_split: str = "val"
    eval_batch_size: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class History:
    """Per-epoch record; a list entry per finished epoch."""

    weights: list[dict[str, float]] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    images_per_second: list[float] = field(default_factory=list)
    diverged: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "losses": self.losses,
            "epoch_seconds": self.seconds,
            "images_per_second": self.images_per_second,
            "diverged": self.diverged,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        return cls(
            weights=list(data["weights"]),
            losses=list(data["losses"]),
            seconds=list(data["epoch_seconds"]),
            images_per_second=list(data["images_per_second"]),
            diverged=data.get("diverged"),
        )


class EpochRecorder(HookBase):
    """Appends every completed epoch to the history (loss means all-reduced over the ranks)."""

    def __init__(self, history: History, dist: Distributed) -> None:
        self.history = history
        self.dist = dist

    def after_train(self, state: IntervalState) -> None:
        result = state.result
        if result is None or result.stopped or result.diverged:
            return
        self.history.weights.append(result.weights)
        self.history.losses.append(self.dist.mean(result.losses))
        self.history.seconds.append(round(result.seconds, 3))
        self.history.images_per_second.append(round(result.images_per_second * self.dist.world, 3))


def train_epochs(
    trainer: Trainer,
    loader: Any,
    source: WeightSource,
    epochs: int,
    per_epoch: int,
    dist: Distributed,
    history: History,
    hooks: Sequence[HookBase] = (),
) -> History:
    """Epochs ``len(history.losses) + 1 .. epochs``, each one interval of ``per_epoch`` steps.

    Stops at the first diverged epoch (``history.diverged``) or when a hook stops
    the interval (the partial epoch is not recorded). ``hooks`` run after the
    epoch is recorded, so a :class:`CheckpointHook` saves the history with it.
    """
    all_hooks = [EpochRecorder(history, dist), *hooks]
    for epoch in range(len(history.losses) + 1, epochs + 1):
        previous = history.losses[-1] if history.losses else None
        if source.rank0_only:
            weights, error = None, None
            if dist.main:
                try:
                    weights = source.strategy(epoch, previous).weights
                except Exception as exc:  # re-raised below, on every rank
                    error = exc
            dist.check(error)
            strategy = FixedWeights(dist.broadcast(weights))
        else:
            strategy = source.strategy(epoch, previous)
        log.info("epoch %d/%d weights %s", epoch, epochs, _rounded(strategy.weights))
        result = trainer.train_interval(
            interval_batches(loader, epoch - 1, per_epoch),
            strategy,
            per_epoch,
            hooks=all_hooks,
            label=f"[epoch {epoch}/{epochs}]",
        )
        if result.stopped:
            break
        if result.diverged:
            history.diverged = result.reason
            break
        log.info("epoch %d/%d mean losses %s", epoch, epochs, _rounded(history.losses[-1]))
    return history


def _rounded(values: Mapping[str, float]) -> dict[str, float]:
    return {name: float(f"{value:.5g}") for name, value in values.items()}


@dataclass
class JobResult:
    ending: Ending
    metrics: dict[str, Any] | None


def run_job(
    options: JobOptions,
    store: ObjectStore,
    make_source: Callable[[Any, Distributed], WeightSource],
    should_stop: Callable[[], bool] | None = None,
) -> JobResult:
    """The whole job: resume or start, train, evaluate on the real validation split, write.

    ``make_source(model, dist)`` builds the weight source once the model exists
    (static strategies need its losses and layers).
    """
    metrics_key = keys.transfer_key(options.job_id, METRICS)
    if store.exists(metrics_key):
        metrics = store.get_json(metrics_key)
        log.info("%s exists: job %s is done", store.uri_of(metrics_key), options.job_id)
        return JobResult(Ending.FINISHED, metrics)
    dist = Distributed(options.device)
    try:
        return _run(options, store, make_source, dist, should_stop)
    finally:
        dist.close()


@dataclass
class _Job:
    """What a job trains, built (or resumed) before its first epoch."""

    model: nn.Module
    source: WeightSource
    loader: Any
    trainer: Trainer
    per_epoch: int
    history: History
    seed: int


def _run(
    options: JobOptions,
    store: ObjectStore,
    make_source: Callable[[Any, Distributed], WeightSource],
    dist: Distributed,
    should_stop: Callable[[], bool] | None,
) -> JobResult:
    started = time.monotonic()
    last_key = keys.transfer_key(options.job_id, LAST)
    job = _prepare(options, store, last_key, make_source, dist)

    def save_last(state: IntervalState) -> None:
        if dist.main:
            _save_last(store, last_key, job.model, job.trainer, job.source, job.history)

    hooks: list[HookBase] = [ProgressLogger(options.train.log_every), CheckpointHook(save_last)]
    if should_stop is not None:
        hooks.insert(0, StopHook(should_stop))
    history = train_epochs(
        job.trainer, job.loader, job.source, options.epochs, job.per_epoch, dist, job.history, hooks
    )
    dist.barrier()
    if history.diverged is None and len(history.losses) < options.epochs:
        log.warning("stopped after epoch %d; run again to resume", len(history.losses))
        return JobResult(Ending.STOPPED, None)
    if not dist.main:
        return JobResult(Ending.FINISHED, None)
    if history.diverged is None:
        scores = _evaluate_and_save(options, store, job)
    else:
        log.error("training diverged: %s", history.diverged)
        scores = dict.fromkeys(("pq", "pq_th", "pq_st", "sq", "rq"))
    final = None if history.diverged else store.uri_of(keys.transfer_key(options.job_id, FINAL))
    metrics = _metrics(options, job, dist, scores, final, time.monotonic() - started)
    store.put_json(keys.transfer_key(options.job_id, METRICS), metrics)
    store.delete(last_key)
    log.info("metrics written to %s", store.uri_of(keys.transfer_key(options.job_id, METRICS)))
    return JobResult(Ending.DIVERGED if history.diverged else Ending.FINISHED, metrics)


def _prepare(
    options: JobOptions,
    store: ObjectStore,
    last_key: str,
    make_source: Callable[[Any, Distributed], WeightSource],
    dist: Distributed,
) -> _Job:
    """The model, weight source, loader and trainer, resumed from ``last_key`` if it exists."""
    data = options.data
    seed = data.seed if data.seed is not None else 0
    train_split = open_split(data.root, data.split)
    model = fresh_model(
        options.model, train_split.categories, options.model_config, derive_seed(seed, "init")
    )
    source, error = None, None
    try:
        source = make_source(model, dist)
    except Exception as exc:  # re-raised below, on every rank
        error = exc
    dist.check(error)
    kept = source.kept
    if kept is not None:
        kept.to(dist.device)  # learnable weights live where the losses are
        if dist.active and not kept.data_parallel:
            raise ValueError(
                f"{type(kept).__name__} runs on one process only (its updates use per-process "
                "statistics)"
            )
    loader = train_loader(
        train_split, model, data, derive_seed(seed, "data"), dist.rank, dist.world
    )
    per_epoch = options.iterations_per_epoch or len(loader)
    trainer = Trainer(
        model,
        options.train,
        options.epochs * per_epoch,
        dist.device,
        strategy_parameters=list(kept.parameters()) if kept is not None else [],
        distributed=dist.active,
    )
    history = History()
    if store.exists(last_key):
        history = _resume(store, last_key, model, trainer, source)
        log.info("resumed %s after epoch %d", options.job_id, len(history.losses))
    elif dist.main:
        log.info(
            "job %s: %d epochs of %d iterations, global batch %d on %d process(es), device %s",
            options.job_id,
            options.epochs,
            per_epoch,
            data.batch_size,
            dist.world,
            dist.device,
        )
    return _Job(model, source, loader, trainer, per_epoch, history, seed)


def _evaluate_and_save(options: JobOptions, store: ObjectStore, job: _Job) -> dict[str, float]:
    """PQ on the validation split, then the final checkpoint (rank 0, after a whole training)."""
    val_split = open_split(options.data.root, options.val_split)
    eval_started = time.monotonic()
    batch = options.eval_batch_size or options.data.batch_size
    scores = evaluate_pq(job.model, val_split, batch, workers=options.data.workers)
    log.info(
        "PQ %.2f (things %.2f, stuff %.2f) on %s (%d images, %.1fs)",
        scores["pq"],
        scores["pq_th"],
        scores["pq_st"],
        options.val_split,
        len(val_split),
        time.monotonic() - eval_started,
    )
    history = job.history
    final = Checkpoint(
        model_name=job.model.model_name,
        model_config=job.model.config,
        model_state=job.model.state_dict(),
        trainer_state=job.trainer.state_dict(),
        weights=history.weights[-1] if history.weights else None,
        extra={"job": options.job_id, **options.metadata},
    )
    save_checkpoint(store, keys.transfer_key(options.job_id, FINAL), final)
    return scores


def _metrics(
    options: JobOptions,
    job: _Job,
    dist: Distributed,
    scores: Mapping[str, float | None],
    final_checkpoint: str | None,
    wall_seconds: float,
) -> dict[str, Any]:
    """The job's ``metrics.json``: scores, the per-epoch history and the settings it ran."""
    data, train = options.data, options.train
    return {
        **scores,
        **job.history.as_dict(),
        "clipped": job.source.clipped,
        "epochs": options.epochs,
        "iterations_per_epoch": job.per_epoch,
        "batch_size": data.batch_size,
        "world_size": dist.world,
        "wall_seconds": round(wall_seconds, 3),
        "model": job.model.model_name,
        "model_config": {k: v for k, v in job.model.config.items() if k != "categories"},
        "lr": train.lr,
        "momentum": train.momentum,
        "weight_decay": train.weight_decay,
        "head_lr_scaling": train.head_lr_scaling,
        "data": str(data.root),
        "val_split": options.val_split,
        "seed": job.seed,
        "final_checkpoint": final_checkpoint,
        **options.metadata,
    }


def _save_last(
    store: ObjectStore,
    key: str,
    model: nn.Module,
    trainer: Trainer,
    source: WeightSource,
    history: History,
) -> None:
    """The resume point after the last recorded epoch: model, optimizer, RNG, learnable
    weights, history."""
    checkpoint = Checkpoint(
        model_name=model.model_name,
        model_config=model.config,
        model_state=model.state_dict(),
        trainer_state=trainer.state_dict(),
        rng_state=capture_rng_state(),
        weights=history.weights[-1],
        extra={
            "epoch": len(history.losses),
            "history": history.as_dict(),
            "clipped": source.clipped,
            "strategy": source.kept.state_dict() if source.kept is not None else None,
        },
    )
    save_checkpoint(store, key, checkpoint)


def _resume(
    store: ObjectStore, key: str, model: nn.Module, trainer: Trainer, source: WeightSource
) -> History:
    checkpoint = load_checkpoint(store, key)
    if checkpoint.model_name != model.model_name:
        raise CheckpointError(
            f"{store.uri_of(key)} holds a {checkpoint.model_name!r} model, not {model.model_name!r}"
        )
    model.load_state_dict(checkpoint.model_state)
    trainer.load_state_dict(checkpoint.trainer_state)
    if checkpoint.rng_state is not None:
        restore_rng_state(checkpoint.rng_state)
    extra = checkpoint.extra
    if source.kept is not None and extra.get("strategy") is not None:
        source.kept.load_state_dict(extra["strategy"])
    if extra.get("clipped") is not None and source.clipped is not None:
        source.clipped[:] = extra["clipped"]
    return History.from_dict(extra["history"])


def dumps_metrics(metrics: Mapping[str, Any]) -> str:
    return json.dumps(metrics, indent=1, sort_keys=True)

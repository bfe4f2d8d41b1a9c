"""Train a fresh model for E epochs with pluggable loss weights: transfer runs and baselines.

One epoch loop (:func:`train_epochs`) serves ``adaseg transfer`` (weights
from a finished run's policy, asked of the controller before every epoch)
and ``adaseg train`` (a static strategy: equal, published, any vector,
uncertainty, GradNorm), so the demo and the benchmark compare like with like:
same data, schedule, evaluation and metrics file, only the weights differ.

Transfer schedule (decided): in the dynamic modes (``ensemble``, ``final``)
epoch 1 is the pseudo epoch with every weight 1; its mean losses are l^1, and
before epoch e+1 the controller is asked with l^e, ``epoch=e``,
``epochs=E`` (Eq. 7). The static modes (``static-pred``, ``static-final``) ask
once and keep the weights for all E epochs.

Data parallel with torchrun: every rank trains its slice of each global
batch (DDP averages gradients), the per-epoch loss means are all-reduced,
rank 0 alone talks to the controller and broadcasts the weights, and rank 0
alone writes to the store. Resumable: an existing ``metrics.json`` means
done; otherwise ``last.pt`` (written after every epoch) is resumed from.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from controller_service import layout
from controller_service.store import ObjectStore
from trainer_image.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from trainer_image.evaluation import evaluate_pq
from trainer_image.session import (
    DataOptions,
    derive_seed,
    fresh_model,
    open_split,
    resolve_device,
    train_loader,
)
from trainer_image.training import TrainConfig, Trainer, interval_batches
from trainer_image.weighting import FixedWeights, GradNorm, UncertaintyWeighting

log = logging.getLogger("adaseg.transfer")

DYNAMIC_MODES = ("ensemble", "final")
STATIC_MODES = ("static-pred", "static-final")
MODES = DYNAMIC_MODES + STATIC_MODES
STRATEGIES = ("equal", "published", "fixed", "uncertainty", "gradnorm")

METRICS = "metrics.json"
FINAL = "final.pt"
LAST = "last.pt"


class RankFailed(RuntimeError):
    """Another rank of a torchrun job failed; this one stops too."""


class WeightSource(Protocol):
    """Where an epoch's loss weights come from."""

    # True: only rank 0 may ask (a controller); its answer is broadcast as fixed weights.
    rank0_only: bool

    def strategy(self, epoch: int, previous_losses: Mapping[str, float] | None) -> Any:
        """The weighting strategy of epoch ``epoch`` (1-based), given l^{epoch-1}."""
        ...


@dataclass
class ControllerWeights:
    """Weights from a finished run's policy (Eq. 7 or a static mode of the paper's Table 2)."""

    client: Any
    policy_run: str
    mode: str
    epochs: int
    loss_names: list[str]
    gamma: float = 0.9
    rank0_only: bool = True
    clipped: list[list[str]] = field(default_factory=list)
    _static: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def strategy(self, epoch: int, previous_losses: Mapping[str, float] | None) -> FixedWeights:
        if self.mode in STATIC_MODES:
            if self._static is None:
                self._static = self._ask(None, 1)
            return FixedWeights(self._static)
        if epoch == 1:  # the pseudo epoch: its losses are l^1
            self.clipped.append([])
            return FixedWeights.equal(self.loss_names)
        return FixedWeights(self._ask(previous_losses, epoch - 1))

    def _ask(self, losses: Mapping[str, float] | None, epoch: int) -> dict[str, float]:
        answer = self.client.weights(
            self.policy_run, losses, epoch=epoch, epochs=self.epochs, mode=self.mode,
            gamma=self.gamma,
        )  # fmt: skip
        self.clipped.append(list(answer.get("clipped") or []))
        if answer.get("clipped"):
            log.warning("controller clipped weights %s to the floor", answer["clipped"])
        return {name: float(value) for name, value in answer["weights"].items()}


@dataclass
class ConstantStrategy:
    """A static baseline: the same strategy object (learnable or not) every epoch."""

    value: Any
    rank0_only: bool = False

    def strategy(self, epoch: int, previous_losses: Mapping[str, float] | None) -> Any:
        return self.value


def static_strategy(
    name: str, model: Any, weights: Mapping[str, float] | None = None
) -> FixedWeights | UncertaintyWeighting | GradNorm:
    """The baseline ``name`` for ``model``'s losses (``weights`` for ``fixed``)."""
    names = list(model.loss_names)
    if name == "equal":
        return FixedWeights.equal(names)
    if name == "published":
        from trainer_image.models import PUBLISHED_WEIGHTS

        if set(PUBLISHED_WEIGHTS) != set(names):
            raise ValueError(f"published weights are for {sorted(PUBLISHED_WEIGHTS)}, not {names}")
        return FixedWeights(PUBLISHED_WEIGHTS)
    if name == "fixed":
        if weights is None or set(weights) != set(names):
            raise ValueError(f"--weights must give one value for each of {names}")
        return FixedWeights(weights)
    if name == "uncertainty":
        return UncertaintyWeighting(names)
    if name == "gradnorm":
        return GradNorm(names, last_shared_parameters(model))
    raise ValueError(f"unknown strategy {name!r}; expected one of {STRATEGIES}")


def last_shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the last shared layer with a weight matrix (GradNorm's W)."""
    heads = {id(p) for params in model.loss_parameters().values() for p in params}
    shared = [
        module
        for module in model.modules()
        if isinstance(module, nn.Conv2d | nn.Linear) and id(module.weight) not in heads
    ]
    if not shared:
        raise ValueError("the model has no shared conv or linear layer for GradNorm")
    return [shared[-1].weight]


@dataclass
class JobOptions:
    """One training job: a fresh model trained for ``epochs`` epochs, evaluated on ``val_split``."""

    job_id: str
    data: DataOptions
    epochs: int
    iterations_per_epoch: int | None = None
    device: str = "auto"
    model: str = "panoptic_deeplab"
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


class Distributed:
    """torchrun's environment, or a single process; every collective is a no-op on one."""

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device)
        if self.world > 1:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks (every rank ran the same number of steps)."""
        if not self.active:
            return dict(values)
        names = sorted(values)
        tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return dict(zip(names, (tensor / self.world).tolist(), strict=True))

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def check(self, error: BaseException | None) -> None:
        """Raise on every rank if any rank failed, so no rank waits forever in a collective
        for one that has gone (rank 0's controller calls can fail where the others cannot)."""
        if not self.active:
            if error is not None:
                raise error
            return
        messages: list[str | None] = [None] * self.world
        mine = None if error is None else f"{type(error).__name__}: {error}"
        torch.distributed.all_gather_object(messages, mine)
        if error is not None:
            raise error
        failed = [(rank, m) for rank, m in enumerate(messages) if m is not None]
        if failed:
            rank, message = failed[0]
            raise RankFailed(f"rank {rank} failed: {message}")

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def train_epochs(
    trainer: Trainer,
    loader: Any,
    source: WeightSource,
    epochs: int,
    per_epoch: int,
    dist: Distributed,
    history: History,
    *,
    should_stop: Callable[[], bool] | None = None,
    after_epoch: Callable[[int], None] | None = None,
) -> History:
    """Epochs ``len(history.losses) + 1 .. epochs``; the one loop of transfer and train.

    Stops at the first diverged epoch (``history.diverged``) or when
    ``should_stop`` turns true (the partial epoch is not recorded).
    """
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
            should_stop=should_stop,
            label=f"[epoch {epoch}/{epochs}]",
        )
        if result.stopped:
            break
        if result.diverged:
            history.diverged = result.reason
            break
        history.weights.append(result.weights)
        history.losses.append(dist.mean(result.losses))
        history.seconds.append(round(result.seconds, 3))
        history.images_per_second.append(round(result.images_per_second * dist.world, 3))
        log.info("epoch %d/%d mean losses %s", epoch, epochs, _rounded(history.losses[-1]))
        if after_epoch is not None:
            after_epoch(epoch)
    return history


def _rounded(values: Mapping[str, float]) -> dict[str, float]:
    return {name: float(f"{value:.5g}") for name, value in values.items()}


@dataclass
class JobResult:
    exit_code: int
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
    metrics_key = layout.transfer_key(options.job_id, METRICS)
    if store.exists(metrics_key):
        metrics = store.get_json(metrics_key)
        log.info("%s exists: job %s is done", store.uri_of(metrics_key), options.job_id)
        return JobResult(0, metrics)
    dist = Distributed(options.device)
    try:
        return _run(options, store, make_source, dist, should_stop)
    finally:
        dist.close()


def _run(
    options: JobOptions,
    store: ObjectStore,
    make_source: Callable[[Any, Distributed], WeightSource],
    dist: Distributed,
    should_stop: Callable[[], bool] | None,
) -> JobResult:
    started = time.monotonic()
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
    strategy_module = getattr(source, "value", None)
    if isinstance(strategy_module, nn.Module):
        strategy_module.to(dist.device)  # learnable weights live where the losses are
    extra = list(strategy_module.parameters()) if isinstance(strategy_module, nn.Module) else []
    if dist.active and isinstance(strategy_module, GradNorm):
        raise ValueError("GradNorm runs on one process only (its gradient norms are per rank)")
    loader_seed = derive_seed(seed, "data")
    loader = train_loader(train_split, model, data, loader_seed, dist.rank, dist.world)
    per_epoch = options.iterations_per_epoch or len(loader)
    trainer = Trainer(
        model,
        options.train,
        options.epochs * per_epoch,
        dist.device,
        strategy_parameters=extra,
        distributed=dist.active,
    )
    history = History()
    last_key = layout.transfer_key(options.job_id, LAST)
    if store.exists(last_key):
        history = _resume(store, last_key, model, trainer, strategy_module, source)
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

    def after_epoch(epoch: int) -> None:
        if dist.main:
            _save_last(store, last_key, model, trainer, strategy_module, source, history, epoch)

    history = train_epochs(
        trainer,
        loader,
        source,
        options.epochs,
        per_epoch,
        dist,
        history,
        should_stop=should_stop,
        after_epoch=after_epoch,
    )
    dist.barrier()
    if history.diverged is None and len(history.losses) < options.epochs:
        log.warning("stopped after epoch %d; run again to resume", len(history.losses))
        return JobResult(143, None)
    if not dist.main:
        return JobResult(0, None)
    scores: dict[str, float | None] = dict.fromkeys(("pq", "pq_th", "pq_st", "sq", "rq"))
    if history.diverged is None:
        val_split = open_split(data.root, options.val_split)
        eval_started = time.monotonic()
        batch = options.eval_batch_size or data.batch_size
        scores = evaluate_pq(model, val_split, batch, workers=data.workers)
        log.info(
            "PQ %.2f (things %.2f, stuff %.2f) on %s (%d images, %.1fs)",
            scores["pq"],
            scores["pq_th"],
            scores["pq_st"],
            options.val_split,
            len(val_split),
            time.monotonic() - eval_started,
        )
        final = Checkpoint(
            model_name=model.model_name,
            model_config=model.config,
            model_state=model.state_dict(),
            trainer_state=trainer.state_dict(),
            weights=history.weights[-1] if history.weights else None,
            extra={"job": options.job_id, **options.metadata},
        )
        save_checkpoint(store, layout.transfer_key(options.job_id, FINAL), final)
    else:
        log.error("training diverged: %s", history.diverged)
    metrics = {
        **scores,
        **history.as_dict(),
        "clipped": getattr(source, "clipped", None),
        "epochs": options.epochs,
        "iterations_per_epoch": per_epoch,
        "batch_size": data.batch_size,
        "world_size": dist.world,
        "wall_seconds": round(time.monotonic() - started, 3),
        "model": model.model_name,
        "model_config": {k: v for k, v in model.config.items() if k != "categories"},
        "lr": options.train.lr,
        "momentum": options.train.momentum,
        "weight_decay": options.train.weight_decay,
        "head_lr_scaling": options.train.head_lr_scaling,
        "data": str(data.root),
        "val_split": options.val_split,
        "seed": seed,
        "final_checkpoint": (
            store.uri_of(layout.transfer_key(options.job_id, FINAL))
            if history.diverged is None
            else None
        ),
        **options.metadata,
    }
    store.put_json(layout.transfer_key(options.job_id, METRICS), metrics)
    store.delete(layout.transfer_key(options.job_id, LAST))
    log.info("metrics written to %s", store.uri_of(layout.transfer_key(options.job_id, METRICS)))
    return JobResult(1 if history.diverged else 0, metrics)


def _save_last(
    store: ObjectStore,
    key: str,
    model: nn.Module,
    trainer: Trainer,
    strategy_module: Any,
    source: Any,
    history: History,
    epoch: int,
) -> None:
    """The resume point after ``epoch``: model, optimizer, RNG, learnable weights, history."""
    checkpoint = Checkpoint(
        model_name=model.model_name,
        model_config=model.config,
        model_state=model.state_dict(),
        trainer_state=trainer.state_dict(),
        rng_state=capture_rng_state(),
        weights=history.weights[-1],
        extra={
            "epoch": epoch,
            "history": history.as_dict(),
            "clipped": getattr(source, "clipped", None),
            "strategy": (
                strategy_module.state_dict() if isinstance(strategy_module, nn.Module) else None
            ),
        },
    )
    save_checkpoint(store, key, checkpoint)


def _resume(
    store: ObjectStore,
    key: str,
    model: nn.Module,
    trainer: Trainer,
    strategy_module: Any,
    source: Any,
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
    if isinstance(strategy_module, nn.Module) and extra.get("strategy") is not None:
        strategy_module.load_state_dict(extra["strategy"])
    if extra.get("clipped") is not None and hasattr(source, "clipped"):
        source.clipped[:] = extra["clipped"]
    return History.from_dict(extra["history"])


def dumps_metrics(metrics: Mapping[str, Any]) -> str:
    return json.dumps(metrics, indent=1, sort_keys=True)

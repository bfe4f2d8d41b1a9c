"""The member job: lease, load, train one interval, evaluate, save, report, repeat.

One worker process is one trainer pod of the paper's population. It owns no
state the run needs: everything it produces goes to the store (checkpoints)
and the controller (losses, PQ), so killing it at any moment loses at most the
interval in progress, which the controller re-issues when the lease expires.

Round semantics (docs/design.md, "The run lifecycle"): round 0 is the pseudo epoch: one
member, all weights 1, from the common initial model ``init.pt``, which this
worker creates (seeded by the run's seed) if it does not exist yet, or loads if
it does (a re-issued round 0). Round t >= 1 loads its ``init_checkpoint_uri``
(``init.pt`` for t = 1, with a fresh optimizer; the best member of round t-1
with its optimizer and schedule for t > 1: the broadcast). Every assignment
trains global iterations [e·q, (e+1)·q) of one cosine schedule spanning
``epochs · q``, with ``(epoch e, epochs)`` as the controller places the round
(rounds 1..T are epochs 0..T-1; round 0 runs at round 1's position).

All members of a round see the same batches in the same order (the data seed
depends on the run and the assignment's epoch only), so their PQs differ by
their loss weights, not by their luck with the data.

Every assignment ends one of four ways (:class:`AssignmentEnd`): reported;
*diverged* (the loss went non-finite: a property of the weights, reward −1);
*failed* (the member could not be trained: a corrupt or truncated checkpoint,
unreadable data, a checkpoint URI outside the store, a store error after its
retries; reported with the reason so the controller can count attempts instead
of waiting for the lease to expire); or abandoned (SIGTERM or a lost lease:
nothing reported). After ``max_consecutive_failures`` failed assignments in a
row the worker gives up (``Ending.FAILING``): one that fails everything is
broken, and its Job should restart it. Errors of the worker's own set-up
(``SetupError``: flags that do not fit the run) and an unreachable controller
are not the member's fault and end the process instead.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from controller_service.contract import keys
from controller_service.contract.client import (
    ClientError,
    Conflict,
    ControllerClient,
    ControllerError,
    NotFound,
)
from controller_service.contract.schemas import Assignment
from controller_service.contract.store import ObjectStore, StoreError
from trainer_image import DEFAULT_MODEL
from trainer_image.data.coco_panoptic import DatasetError, PanopticSplit
from trainer_image.engine.batches import interval_batches
from trainer_image.engine.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    save_checkpoint,
)
from trainer_image.engine.config import TrainConfig
from trainer_image.engine.hooks import ProgressLogger, StopHook
from trainer_image.engine.loop import Trainer
from trainer_image.eval.evaluate import GroundTruthCache, evaluate_pq
from trainer_image.jobs.ending import Ending
from trainer_image.jobs.heartbeat import Heartbeat
from trainer_image.jobs.session import (
    DataOptions,
    SetupError,
    derive_seed,
    fresh_model,
    load_proxy_splits,
    model_from_checkpoint,
    train_loader,
)
from trainer_image.jobs.stop import StopFlag
from trainer_image.weighting.fixed import FixedWeights

log = logging.getLogger("adaseg.worker")

# failures a member can have; anything else is logged with its traceback (a bug shows)
EXPECTED_FAILURES = (CheckpointError, DatasetError, StoreError, ValueError)
MAX_REASON_CHARS = 2000


@dataclass
class WorkerOptions:
    """What ``adaseg worker`` is told; see ``cli/worker.py`` for the flags."""

    run: str
    data: DataOptions
    worker_id: str = field(default_factory=lambda: default_worker_id())
    device: str = "cpu"
    iterations: int | None = None
    model: str = DEFAULT_MODEL
    model_config: Mapping[str, Any] | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_batch_size: int | None = None
    max_assignments: int | None = None
    # failed assignments in a row after which the worker gives up (Ending.FAILING)
    max_consecutive_failures: int = 3
    # cap on one sleep while the controller says "wait" (a round closing soon)
    max_wait_seconds: float = 5.0


def default_worker_id() -> str:
    """The pod name in a cluster (HOSTNAME), host and pid elsewhere: unique per process."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{os.getpid()}"


class AssignmentEnd(Enum):
    REPORTED = "reported"  # trained and reported (or the report refused as stale)
    DIVERGED = "diverged"  # reported diverged: the weights blew the loss up
    FAILED = "failed"  # could not be trained; reported failed with the reason
    ABANDONED = "abandoned"  # SIGTERM or a lost lease: nothing reported, the lease expires


@dataclass
class Outcome:
    """What an assignment produced, ready to report."""

    losses: dict[str, float] = field(default_factory=dict)
    pq: float = 0.0
    checkpoint_uri: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    diverged_reason: str | None = None


def failure_reason(error: BaseException) -> str:
    """One line for the controller: the error's type and message, bounded."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


class Worker:
    """Works on one run until it is finished (see the module docstring)."""

    def __init__(
        self,
        client: ControllerClient,
        store: ObjectStore,
        options: WorkerOptions,
        stop: StopFlag | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.options = options
        self.stop = stop or StopFlag()
        self.device = torch.device(options.device)
        self.seed = 0
        self.loss_names: list[str] = []
        self._splits: tuple[PanopticSplit, PanopticSplit] | None = None
        self._gt_cache: GroundTruthCache | None = None

    # -- the loop --------------------------------------------------------------
    def run(self) -> Ending:
        """Lease and work until the run is finished, SIGTERM, or too many failures."""
        run = self.client.get_run(self.options.run)  # NotFound: the caller names the run
        seed = self.options.data.seed
        self.seed = (seed if seed is not None else run.config.get("seed")) or 0
        self.loss_names = list(run.loss_names)
        log.info(
            "worker %s on run %s (%s, round %s of %s, population %s), device %s",
            self.options.worker_id,
            run.id,
            run.status,
            run.round,
            run.rounds,
            run.population,
            self.device,
        )
        if run.status != "finished":
            # data and flags that cannot work fail here, before a lease is taken and left to expire
            self._data()
        done = failures = 0
        while not self.stop.terminated.is_set():
            if self.options.max_assignments is not None and done >= self.options.max_assignments:
                log.info("did %d assignments (--max-assignments); exiting", done)
                return Ending.FINISHED
            answer = self.client.lease(self.options.run, self.options.worker_id)
            if answer.state == "finished":
                log.info("run %s is finished; exiting", self.options.run)
                return Ending.FINISHED
            if answer.state == "wait":
                delay = min(float(answer.retry_after or 1.0), self.options.max_wait_seconds)
                self.stop.terminated.wait(max(delay, 0.05))
                continue
            if answer.assignment is None:
                raise ControllerError(f"unexpected lease answer {answer!r}")
            end = self.work(answer.assignment)
            done += 1
            if end is AssignmentEnd.FAILED:
                failures += 1
                if failures >= self.options.max_consecutive_failures:
                    log.error(
                        "%d assignments failed in a row (--max-consecutive-failures); this "
                        "worker looks broken, exiting",
                        failures,
                    )
                    return Ending.FAILING
            elif end is not AssignmentEnd.ABANDONED:
                failures = 0
        return Ending.STOPPED

    def work(self, assignment: Assignment) -> AssignmentEnd:
        """One assignment, from its initial checkpoint to its report (or a silent abandon)."""
        self.stop.lease_lost.clear()
        run_id, assignment_id = self.options.run, assignment.id
        label = f"[round {assignment.round} member {assignment.member}]"
        lease_seconds = assignment.lease_seconds

        def beat() -> None:
            self.client.heartbeat(run_id, assignment_id)

        with Heartbeat(beat, lease_seconds / 3.0, self.stop.lease_lost):
            try:
                outcome = self._train_and_evaluate(assignment, label)
            except (ControllerError, SetupError):
                raise  # not the member's fault: the process ends with its exit code
            except Exception as exc:
                if self.stop():  # e.g. a store retry cut short by SIGTERM
                    log.warning("%s abandoned (%s); the lease will expire", label, exc)
                    return AssignmentEnd.ABANDONED
                if not isinstance(exc, EXPECTED_FAILURES):
                    log.exception("%s unexpected error", label)
                return self._report_failed(assignment_id, failure_reason(exc), label)
            if outcome is None or self.stop():
                log.warning("%s abandoned before reporting; the lease will expire", label)
                return AssignmentEnd.ABANDONED
            if outcome.diverged_reason is not None:
                return self._report_diverged(assignment_id, outcome.diverged_reason, label)
            try:
                self.client.report(
                    run_id,
                    assignment_id,
                    losses=outcome.losses,
                    pq=outcome.pq,
                    checkpoint_uri=outcome.checkpoint_uri,
                    metrics=outcome.metrics,
                )
            except (Conflict, NotFound) as exc:  # the lease was lost and re-issued
                log.warning("%s report refused (%s); moving on", label, exc)
                return AssignmentEnd.REPORTED
            except ClientError as exc:
                # e.g. a loss of exactly 0, which Eq. 1 cannot divide by: the member
                # cannot be used, but the round must not wait for it forever
                return self._report_diverged(assignment_id, f"report refused: {exc}", label)
        log.info("%s phase=report PQ %.2f sent", label, outcome.pq)
        return AssignmentEnd.REPORTED

    def _report_diverged(self, assignment_id: str, reason: str, label: str) -> AssignmentEnd:
        try:
            self.client.report_diverged(self.options.run, assignment_id, reason)
            log.warning("%s phase=report diverged: %s", label, reason)
        except ClientError as exc:
            log.warning("%s diverged report refused (%s); moving on", label, exc)
        return AssignmentEnd.DIVERGED

    def _report_failed(self, assignment_id: str, reason: str, label: str) -> AssignmentEnd:
        try:
            self.client.report_failed(self.options.run, assignment_id, reason)
            log.warning("%s phase=report failed: %s", label, reason)
        except ClientError as exc:
            log.warning(
                "%s could not be trained (%s); failed report refused (%s)", label, reason, exc
            )
        return AssignmentEnd.FAILED

    # -- the phases ------------------------------------------------------------
    def _data(self) -> tuple[PanopticSplit, PanopticSplit, GroundTruthCache]:
        """Proxy splits of the run (same on every worker: seeded by the run), loaded once."""
        if self._splits is None:
            self._splits = load_proxy_splits(self.options.data, self.seed)
            self._gt_cache = GroundTruthCache(self._splits[1])
            log.info(
                "data %s: proxy-train %d images, proxy-val %d images",
                self.options.data.root,
                len(self._splits[0]),
                len(self._splits[1]),
            )
        return self._splits[0], self._splits[1], self._gt_cache

    def _initial_model(self, assignment: Assignment, label: str) -> tuple[Any, Checkpoint]:
        """The assignment's starting point; round 0 creates ``init.pt`` when it is missing."""
        uri = assignment.init_checkpoint_uri
        key = self.store.key_of(uri)  # StoreError for a URI outside this store
        if assignment.round == 0 and not self.store.exists(key):
            proxy_train, _, _ = self._data()
            model = fresh_model(
                self.options.model,
                proxy_train.categories,
                self.options.model_config,
                derive_seed(self.seed, "init"),
            )
            if list(model.loss_names) != self.loss_names:
                raise SetupError(
                    f"model {self.options.model!r} has losses {list(model.loss_names)}, "
                    f"run {self.options.run} was created for {self.loss_names}"
                )
            checkpoint = Checkpoint(
                model_name=model.model_name,
                model_config=model.config,
                model_state=model.state_dict(),
                run=self.options.run,
            )
            save_checkpoint(self.store, key, checkpoint)
            log.info("%s phase=init saved the common initial model to %s", label, uri)
            return model, checkpoint
        started = time.monotonic()
        checkpoint = load_checkpoint(self.store, key)
        log.info("%s phase=load %s (%.1fs)", label, uri, time.monotonic() - started)
        return model_from_checkpoint(checkpoint), checkpoint

    def _train_and_evaluate(self, assignment: Assignment, label: str) -> Outcome | None:
        run_id = self.options.run
        round_, member = assignment.round, assignment.member
        epoch, epochs = assignment.epoch, assignment.epochs
        weights = {name: float(value) for name, value in assignment.weights.items()}
        proxy_train, proxy_val, gt_cache = self._data()
        model, start = self._initial_model(assignment, label)
        loader = train_loader(
            proxy_train, model, self.options.data, derive_seed(self.seed, "data", epoch)
        )
        per_epoch = self.options.iterations or len(loader)
        trainer = self._scheduled_trainer(model, start, epoch, epochs, per_epoch, label)
        torch.manual_seed(derive_seed(self.seed, "train", round_, member))
        log.info(
            "%s phase=train epoch %d of %d, %d iterations of %d images, weights %s",
            label,
            epoch,
            epochs,
            per_epoch,
            self.options.data.batch_size,
            {name: round(value, 4) for name, value in weights.items()},
        )
        result = trainer.train_interval(
            interval_batches(loader, epoch, per_epoch),
            FixedWeights(weights),
            per_epoch,
            hooks=[StopHook(self.stop), ProgressLogger(self.options.train.log_every)],
            label=label,
        )
        if result.stopped:
            return None
        if result.diverged:
            return Outcome(diverged_reason=result.reason)
        started = time.monotonic()
        batch = self.options.eval_batch_size or self.options.data.batch_size
        scores = evaluate_pq(model, proxy_val, batch, gt_cache, self.options.data.workers)
        eval_seconds = time.monotonic() - started
        log.info(
            "%s phase=eval PQ %.2f (things %.2f, stuff %.2f) on %d images in %.1fs",
            label,
            scores["pq"],
            scores["pq_th"],
            scores["pq_st"],
            len(proxy_val),
            eval_seconds,
        )
        if self.stop():
            return None
        checkpoint = Checkpoint(
            model_name=start.model_name,
            model_config=start.model_config,
            model_state=model.state_dict(),
            trainer_state=trainer.state_dict(),
            rng_state=capture_rng_state(),
            weights=weights,
            run=run_id,
            round=round_,
            member=member,
            extra={"losses": result.losses, "scores": scores},
        )
        uri = self._save(assignment, checkpoint, label)
        return Outcome(
            losses=result.losses,
            pq=scores["pq"],
            checkpoint_uri=uri,
            metrics={
                **{name: value for name, value in scores.items() if name != "pq"},
                "iterations": result.iterations,
                "train_seconds": round(result.seconds, 3),
                "images_per_second": round(result.images_per_second, 3),
                "eval_seconds": round(eval_seconds, 3),
                "worker": self.options.worker_id,
            },
        )

    def _scheduled_trainer(
        self, model: Any, start: Checkpoint, epoch: int, epochs: int, per_epoch: int, label: str
    ) -> Trainer:
        """A trainer at the start of ``epoch`` on the run's one schedule of ``epochs`` epochs,
        with the broadcast's optimizer state when the start checkpoint has one."""
        trainer = Trainer(model, self.options.train, epochs * per_epoch, self.device)
        if start.trainer_state is not None:  # the broadcast: optimizer and schedule included
            trainer.load_state_dict(start.trainer_state)
            if trainer.iteration != epoch * per_epoch:
                log.warning(
                    "%s checkpoint is at global iteration %d, the schedule says %d; "
                    "following the schedule",
                    label,
                    trainer.iteration,
                    epoch * per_epoch,
                )
        trainer.iteration = epoch * per_epoch
        return trainer

    def _save(self, assignment: Assignment, checkpoint: Checkpoint, label: str) -> str:
        """Upload the member's checkpoint where the controller asked (or to the default key)."""
        target = assignment.checkpoint_uri
        key = (
            self.store.key_of(target)
            if target
            else keys.member_checkpoint_key(self.options.run, assignment.round, assignment.member)
        )
        uri = save_checkpoint(self.store, key, checkpoint)
        log.info("%s phase=save %s", label, uri)
        return uri

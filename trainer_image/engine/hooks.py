"""Hooks around the interval loop, in the shape of detectron2's ``HookBase``.

The loop (``engine/loop.py``) only trains; everything around the step is a
hook: stopping on a flag, progress logging, heartbeats, resume points. A hook
sees the interval through :class:`IntervalState` and may ask the loop to stop
(``state.request_stop()``); hooks run in the order given, on every rank.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from trainer_image.engine.loop import IntervalResult, Trainer

log = logging.getLogger("adaseg.train")


@dataclass
class IntervalState:
    """The interval in progress, as hooks see it."""

    trainer: Trainer
    iterations: int  # steps planned
    label: str  # e.g. "[round 2 member 1]", for log lines
    started: float  # time.monotonic() at the start
    done: int = 0  # steps completed
    images: int = 0
    losses: Mapping[str, torch.Tensor] = field(default_factory=dict)  # the last step's
    stop_requested: bool = False
    result: IntervalResult | None = None  # set before after_train

    def request_stop(self) -> None:
        """Stop before the next step (all ranks together under torchrun)."""
        self.stop_requested = True


class HookBase:
    """Override what you need; every method is a no-op here."""

    def before_train(self, state: IntervalState) -> None:
        """Before the first step of the interval."""

    def before_step(self, state: IntervalState) -> None:
        """Before each step; ``state.request_stop()`` here skips the step."""

    def after_step(self, state: IntervalState) -> None:
        """After each completed step (``state.done`` counts it)."""

    def after_train(self, state: IntervalState) -> None:
        """After the interval, stopped, diverged or complete (``state.result`` says which)."""


class StopHook(HookBase):
    """Stops the interval as soon as ``should_stop()`` is true, checked before every step."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def before_step(self, state: IntervalState) -> None:
        if self.should_stop():
            state.request_stop()


class HeartbeatHook(HookBase):
    """Calls ``beat()`` after a step whenever ``seconds`` have passed since the last call.

    For a loop whose lease only has to outlive training. The worker beats from a
    thread instead (``jobs/heartbeat.py``): its evaluation and upload, outside
    the loop, must keep the lease too.
    """

    def __init__(self, beat: Callable[[], Any], seconds: float) -> None:
        self.beat = beat
        self.seconds = seconds
        self._last = 0.0

    def before_train(self, state: IntervalState) -> None:
        self._last = state.started

    def after_step(self, state: IntervalState) -> None:
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self.beat()
            self._last = now


class CheckpointHook(HookBase):
    """Calls ``save(state)`` after every interval that completed (not stopped, not diverged):
    the resume point of a job whose intervals are epochs."""

    def __init__(self, save: Callable[[IntervalState], None]) -> None:
        self.save = save

    def after_train(self, state: IntervalState) -> None:
        result = state.result
        if result is not None and not (result.stopped or result.diverged):
            self.save(state)


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLogger(HookBase):
    """Every ``every`` steps (0: never) a line with it/s, img/s, ETA, lr and the losses;
    at the end one line with the interval's speed and how it ended."""

    def __init__(self, every: int) -> None:
        self.every = every
        self._last = 0.0

    def before_train(self, state: IntervalState) -> None:
        self._last = state.started

    def after_step(self, state: IntervalState) -> None:
        done, iterations = state.done, state.iterations
        if not self.every or not (done % self.every == 0 or done == iterations):
            return
        now = time.monotonic()
        if now <= self._last:
            return
        self._last = now
        elapsed = now - state.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (iterations - done) / rate if rate > 0 else 0.0
        trainer = state.trainer
        parts = " ".join(f"{n}={float(loss.detach()):.4g}" for n, loss in state.losses.items())
        log.info(
            "%sit %d/%d (global %d/%d) %.2f it/s %.2f img/s ETA %s lr=%.4g %s",
            f"{state.label} " if state.label else "",
            done,
            iterations,
            trainer.iteration,
            trainer.total_iterations,
            rate,
            state.images / elapsed if elapsed > 0 else 0.0,
            _fmt_seconds(eta),
            trainer.optimizer.param_groups[0]["lr"],
            parts,
        )

    def after_train(self, state: IntervalState) -> None:
        result = state.result
        if result is None:
            return
        if result.diverged:
            log.warning("%s diverged: %s", state.label or "interval", result.reason)
        log.info(
            "%sdone %d/%d it in %.1fs: %.2f it/s, %.2f img/s%s",
            f"{state.label} " if state.label else "",
            result.iterations,
            state.iterations,
            result.seconds,
            result.iterations_per_second,
            result.images_per_second,
            " (diverged)" if result.diverged else " (stopped)" if result.stopped else "",
        )

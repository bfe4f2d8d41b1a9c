"""The interval loop every trainer shares: weighted steps on one schedule, hooks around them.

``Trainer.train_interval`` runs ``iterations`` steps of total loss
``strategy.combine(losses)`` (SGD, per-head learning rates and the run-long
cosine of ``engine/optim.py``) and returns the mean of each unweighted loss.
Before the first step, before and after each step and after the last, it calls
its hooks (``engine/hooks.py``): stopping, logging, heartbeats and resume points
live there, not here.

A non-finite loss never raises: the interval stops, before the step touches
the weights, and says ``diverged``, so a worker can report the member as
diverged instead of crashing its pod. Under torchrun (``distributed=True``)
the model is wrapped in DDP and the ranks agree every step on stopping and on
divergence, so none is left waiting in an all-reduce.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainer_image.engine.batches import batch_images, to_device
from trainer_image.engine.compile import maybe_compile
from trainer_image.engine.config import TrainConfig
from trainer_image.engine.hooks import HookBase, IntervalState
from trainer_image.engine.optim import (
    apply_weights,
    clip_gradients,
    make_optimizer,
    set_learning_rates,
)
from trainer_image.weighting.base import WeightingStrategy


@dataclass
class IntervalResult:
    """What one interval did: the reported loss vector and how fast it went."""

    losses: dict[str, float]
    iterations: int
    images: int
    seconds: float
    diverged: bool = False
    reason: str | None = None
    stopped: bool = False
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def iterations_per_second(self) -> float:
        return self.iterations / self.seconds if self.seconds > 0 else 0.0


def _non_finite(losses: Mapping[str, torch.Tensor], total: torch.Tensor) -> list[str]:
    """Names of the non-finite losses, or ``total`` when only the weighted sum overflowed."""
    bad = [name for name, loss in losses.items() if not bool(torch.isfinite(loss).all())]
    return bad or ["total"]


class Trainer:
    """A model, its optimizer and its place in the schedule; trains interval after interval.

    ``total_iterations`` is the length of the whole run (epochs × iterations per
    epoch): it fixes the cosine, whatever slice of it one interval covers.
    ``iteration`` is the global iteration, restored from checkpoints.
    ``strategy_parameters``: a learnable strategy's parameters, trained in their own group.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        total_iterations: int,
        device: torch.device | str = "cpu",
        strategy_parameters: Sequence[nn.Parameter] = (),
        distributed: bool = False,
    ) -> None:
        if total_iterations <= 0:
            raise ValueError(f"total_iterations must be > 0, got {total_iterations}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.config = config
        self.total_iterations = int(total_iterations)
        self.iteration = 0
        self.strategy_parameters = list(strategy_parameters)
        self.optimizer = make_optimizer(self.model, config, self.strategy_parameters)
        self.distributed = distributed
        cuda = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
        self.use_amp = cuda and config.amp
        # A loss scale is needed for float16 only; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.use_amp and self.amp_dtype == torch.float16
        )
        forward: nn.Module = self.model
        if distributed:
            ids = [self.device.index] if cuda and self.device.index is not None else None
            forward = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self._forward = maybe_compile(forward, config.compile, self.device)

    # -- state ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "total_iterations": self.total_iterations,
        }

    def load_state_dict(self, state: Mapping[str, Any], optimizer: bool = True) -> None:
        """Restore the schedule position, and the optimizer/scaler unless ``optimizer`` is off."""
        self.iteration = int(state["iteration"])
        if optimizer and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if optimizer and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    # -- training ------------------------------------------------------------
    def _agree(self, *flags: bool) -> list[bool]:
        """Every rank's flags OR-ed, so all ranks stop together (a no-op on one process)."""
        if not self.distributed:
            return list(flags)
        values = torch.tensor([float(f) for f in flags], device=self.device)
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
        return [bool(v) for v in values.tolist()]

    def train_interval(
        self,
        batches: Iterator[Any],
        strategy: WeightingStrategy,
        iterations: int,
        hooks: Sequence[HookBase] = (),
        label: str = "",
    ) -> IntervalResult:
        """Train ``iterations`` steps on ``batches`` with the strategy's weighted total.

        Returns the mean of each unweighted loss over the steps done. Stops early
        (``stopped``) when a hook requests it, and (``diverged``) at the first
        non-finite loss, before it touches the weights.
        """
        if iterations <= 0:
            raise ValueError(f"iterations must be > 0, got {iterations}")
        apply_weights(self.optimizer, strategy.head_lr_weights, self.config)
        self.model.train()
        state = IntervalState(self, iterations, label, time.monotonic())
        for hook in hooks:
            hook.before_train(state)
        sums: dict[str, torch.Tensor] = {}
        diverged, reason, stopped = False, None, False
        for _ in range(iterations):
            for hook in hooks:
                hook.before_step(state)
            stop_now = state.stop_requested
            if stop_now and not self.distributed:
                stopped = True
                break
            batch = to_device(next(batches), self.device)
            set_learning_rates(self.optimizer, self.iteration, self.total_iterations, self.config)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                losses = self._forward(batch)
                total = strategy.combine(losses)
            values = torch.stack([loss.detach().float() for loss in [*losses.values(), total]])
            bad = [] if bool(torch.isfinite(values).all()) else _non_finite(losses, total)
            # one collective per step: every rank stops, or diverges, together
            stop_now, any_bad = self._agree(stop_now, bool(bad))
            if stop_now:
                stopped = True
                break
            if any_bad:
                diverged = True
                where = ", ".join(bad) if bad else "another rank"
                reason = f"non-finite loss ({where}) at global iteration {self.iteration}"
                self.optimizer.zero_grad(set_to_none=True)
                break
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            if self.distributed:
                self._reduce_strategy_gradients()
            self.scaler.unscale_(self.optimizer)
            if self.config.grad_clip is not None:
                clip_gradients(self.optimizer, self.config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for name, loss in losses.items():
                value = loss.detach().float()
                sums[name] = sums[name] + value if name in sums else value
            state.done += 1
            self.iteration += 1
            state.images += batch_images(batch)
            state.losses = losses
            for hook in hooks:
                hook.after_step(state)
        done = state.done
        means = {name: float(value) / done for name, value in sums.items()} if done else {}
        state.result = IntervalResult(
            losses=means,
            iterations=done,
            images=state.images,
            seconds=time.monotonic() - state.started,
            diverged=diverged,
            reason=reason,
            stopped=stopped,
            weights=dict(strategy.weights),
        )
        for hook in hooks:
            hook.after_train(state)
        return state.result

    def _reduce_strategy_gradients(self) -> None:
        """Average the gradients of learnable weights across ranks; DDP does the model's."""
        world = torch.distributed.get_world_size()
        for param in self.strategy_parameters:
            if param.grad is not None:
                torch.distributed.all_reduce(param.grad)
                param.grad /= world

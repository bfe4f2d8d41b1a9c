"""The weighted training step and the interval loop every trainer shares.

Total loss = Σ λ_i l_i over the model's named losses (through a weighting
strategy, see ``weighting.py``). With fixed weights, the parameters of loss
i's head train at lr/λ_i (the paper's Implementation Details): the head's
gradient is λ_i ∇l_i, so its step is lr ∇l_i whatever λ_i is, and the weights
act on the shared backbone only.

Learnable strategies (uncertainty weighting, GradNorm) train every head at plain
lr, on purpose. They are baselines, and their papers train all parameters at one
learning rate: scaling their heads would compare Ada-Segment with a method nobody
published. And their weights move every step, so lr/λ_i(t) would tie each head's
step size to the strategy's own drifting state (a shrinking exp(−s_i) would speed
its head up as it learns to ignore it), while the rule's premise, a weight constant
over the interval, holds for fixed weights only. ``--no-head-lr-scaling`` gives
fixed weights the same plain-lr treatment, for the ablation.

SGD with momentum and a cosine schedule over the *whole run*: an interval knows
its global iteration range, so a run split into intervals (rounds, epochs,
re-issued leases) follows one schedule.

A non-finite loss never raises: the interval stops and says ``diverged``, so
the worker can report the member as diverged instead of crashing the pod.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainer_image.weighting import FixedWeights

log = logging.getLogger("adaseg.train")

SHARED_GROUP = "shared"
STRATEGY_GROUP = "strategy"


@dataclass
class TrainConfig:
    """Optimisation settings; the defaults are the paper's (Panoptic FPN 1x)."""

    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # Max norm of each parameter group's *effective* gradient (grad × its lr scale); None: off.
    grad_clip: float | None = 10.0
    # Heads at lr/λ_i (the paper); off trains every head at lr, as plain weighted losses do.
    head_lr_scaling: bool = True
    # The cosine ends at lr × min_lr_factor.
    min_lr_factor: float = 0.0
    # Mixed precision applies on CUDA only; on CPU it costs more than it gives.
    amp: bool = True
    amp_dtype: str = "bfloat16"
    # torch.compile: None compiles on CUDA only (see resolve_compile); True/False force it.
    compile: bool | None = None
    log_every: int = 20

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.amp_dtype not in {"bfloat16", "float16"}:
            raise ValueError(f"amp_dtype must be bfloat16 or float16, got {self.amp_dtype!r}")
        if not 0.0 <= self.min_lr_factor <= 1.0:
            raise ValueError(f"min_lr_factor must be in [0, 1], got {self.min_lr_factor}")


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


def resolve_compile(setting: bool | None, device: torch.device) -> bool:
    """Whether to torch.compile: ``None`` (the CLIs' default) on CUDA only, where the fused
    kernels repay the compile time within an interval; on CPU the compile takes longer than
    a CI-sized run. ``True``/``False`` (``--compile``/``--no-compile``) are obeyed as given."""
    return device.type == "cuda" if setting is None else bool(setting)


def cosine_factor(iteration: int, total_iterations: int, min_factor: float = 0.0) -> float:
    """The LR multiplier at a global iteration of a cosine schedule over ``total_iterations``."""
    if total_iterations <= 0:
        raise ValueError(f"total_iterations must be > 0, got {total_iterations}")
    progress = min(max(iteration, 0), total_iterations) / total_iterations
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def head_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each loss's own head parameters; a parameter claimed by two losses counts as shared."""
    claimed: dict[int, int] = {}
    heads = {name: list(params) for name, params in model.loss_parameters().items()}
    for params in heads.values():
        for param in {id(p): p for p in params}.values():
            claimed[id(param)] = claimed.get(id(param), 0) + 1
    return {
        name: [p for p in {id(p): p for p in params}.values() if claimed[id(p)] == 1]
        for name, params in heads.items()
    }


def build_param_groups(
    model: nn.Module, extra_parameters: Sequence[nn.Parameter] = ()
) -> list[dict[str, Any]]:
    """One group for the shared parameters, one per loss head, one for strategy parameters.

    Every group carries ``lr_scale`` (1/λ for a head, 1 otherwise), set by
    :func:`apply_weights`; the group order is fixed so optimizer state loads back.
    """
    heads = head_parameters(model)
    in_heads = {id(p) for params in heads.values() for p in params}
    trainable = [p for p in model.parameters() if p.requires_grad]
    shared = [p for p in trainable if id(p) not in in_heads]
    groups = [{"params": shared, "name": SHARED_GROUP, "loss": None, "lr_scale": 1.0}]
    for name, params in heads.items():
        trainable_head = [p for p in params if p.requires_grad]
        groups.append({"params": trainable_head, "name": f"head:{name}", "loss": name})
        groups[-1]["lr_scale"] = 1.0
    if extra_parameters:
        groups.append(
            {
                "params": list(extra_parameters),
                "name": STRATEGY_GROUP,
                "loss": None,
                "lr_scale": 1.0,
                "weight_decay": 0.0,
            }
        )
    return [group for group in groups if group["params"]]


def make_optimizer(
    model: nn.Module, config: TrainConfig, extra_parameters: Sequence[nn.Parameter] = ()
) -> torch.optim.SGD:
    groups = build_param_groups(model, extra_parameters)
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def apply_weights(
    optimizer: torch.optim.Optimizer, weights: Mapping[str, float] | None, config: TrainConfig
) -> None:
    """Set each head group's lr scale to 1/λ of its loss (or 1 without head scaling)."""
    for group in optimizer.param_groups:
        loss = group.get("loss")
        scale = 1.0
        if loss is not None and weights is not None and config.head_lr_scaling:
            if loss not in weights:
                raise KeyError(f"no weight for loss {loss!r}; weights have {sorted(weights)}")
            scale = 1.0 / float(weights[loss])
        group["lr_scale"] = scale


def set_learning_rates(
    optimizer: torch.optim.Optimizer, iteration: int, total_iterations: int, config: TrainConfig
) -> float:
    """Put every group at lr × lr_scale × cosine(iteration); returns the cosine factor."""
    factor = cosine_factor(iteration, total_iterations, config.min_lr_factor)
    for group in optimizer.param_groups:
        group["lr"] = config.lr * group.get("lr_scale", 1.0) * factor
    return factor


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    """Clip each group so its effective step direction (grad × lr_scale) has norm <= max_norm.

    Clipping all parameters together would let a head with λ = 200 shrink the
    backbone's step; per group, each part is limited by what it actually moves.
    Returns the largest effective norm seen (for logs).
    """
    largest = 0.0
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        scale = float(group.get("lr_scale", 1.0))
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm / scale)
        largest = max(largest, float(norm) * scale)
    return largest


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to the device."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def batch_images(batch: Any) -> int:
    """Number of images in a batch: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(values, Iterable) and not isinstance(values, (str, bytes)):
        for value in values:
            count = batch_images(value)
            if count:
                return count
    return 0


def forever(loader: Iterable[Any], first_pass: int = 0) -> Iterator[Any]:
    """Iterate a loader again and again; passes are numbered for samplers that reshuffle."""
    pass_ = first_pass
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(pass_)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the data loader yields no batches")
        pass_ += 1


def interval_batches(loader: Any, interval: int, iterations: int) -> Iterator[Any]:
    """The batches of interval ``interval`` (0-based): passes over the loader are numbered so
    that no two intervals share one, even when an interval is longer than a pass."""
    passes_per_interval = max(1, math.ceil(iterations / len(loader)))
    return forever(loader, first_pass=interval * passes_per_interval)


def _non_finite(losses: Mapping[str, torch.Tensor], total: torch.Tensor) -> list[str]:
    """Names of the non-finite losses, or ``total`` when only the weighted sum overflowed."""
    bad = [name for name, loss in losses.items() if not bool(torch.isfinite(loss).all())]
    return bad or ["total"]


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Trainer:
    """A model, its optimizer and its place in the schedule; trains interval after interval.

    ``total_iterations`` is the length of the whole run (epochs × iterations per
    epoch): it fixes the cosine, whatever slice of it one interval covers.
    ``iteration`` is the global iteration, restored from checkpoints.
    With ``distributed=True`` (torchrun) the model is wrapped in DDP and the
    ranks agree every step on stopping, so none is left waiting in an all-reduce.
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
        if resolve_compile(config.compile, self.device):
            forward = torch.compile(forward)
        self._forward = forward

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
        strategy: Any,
        iterations: int,
        *,
        should_stop: Callable[[], bool] | None = None,
        heartbeat: Callable[[], None] | None = None,
        heartbeat_seconds: float = 10.0,
        label: str = "",
    ) -> IntervalResult:
        """Train ``iterations`` steps on ``batches`` with the strategy's weighted total.

        Returns the mean of each unweighted loss over the steps done. Stops early
        (``stopped``) when ``should_stop()`` turns true, checked before every
        step, and (``diverged``) at the first non-finite loss, before it touches
        the weights. ``heartbeat`` is called every ``heartbeat_seconds``.
        """
        if iterations <= 0:
            raise ValueError(f"iterations must be > 0, got {iterations}")
        fixed = isinstance(strategy, FixedWeights)  # learnable ones: plain lr (module doc)
        apply_weights(self.optimizer, strategy.weights if fixed else None, self.config)
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        done = images = 0
        diverged, reason, stopped = False, None, False
        start = last_beat = last_log = time.monotonic()
        for step in range(iterations):
            stop_now = bool(should_stop and should_stop())
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
                log.warning("%s diverged: %s", label or "interval", reason)
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
            done += 1
            self.iteration += 1
            images += batch_images(batch)
            now = time.monotonic()
            if heartbeat is not None and now - last_beat >= heartbeat_seconds:
                heartbeat()
                last_beat = now
            log_every = self.config.log_every
            if log_every and (done % log_every == 0 or done == iterations) and now > last_log:
                last_log = now
                self._log_progress(label, step + 1, iterations, images, now - start, losses)
        seconds = time.monotonic() - start
        means = {name: float(value) / done for name, value in sums.items()} if done else {}
        result = IntervalResult(
            losses=means,
            iterations=done,
            images=images,
            seconds=seconds,
            diverged=diverged,
            reason=reason,
            stopped=stopped,
            weights=dict(strategy.weights),
        )
        log.info(
            "%sdone %d/%d it in %.1fs: %.2f it/s, %.2f img/s%s",
            f"{label} " if label else "",
            done,
            iterations,
            seconds,
            result.iterations_per_second,
            result.images_per_second,
            " (diverged)" if diverged else " (stopped)" if stopped else "",
        )
        return result

    def _reduce_strategy_gradients(self) -> None:
        """Average the gradients of learnable weights across ranks; DDP does the model's."""
        world = torch.distributed.get_world_size()
        for param in self.strategy_parameters:
            if param.grad is not None:
                torch.distributed.all_reduce(param.grad)
                param.grad /= world

    def _log_progress(
        self,
        label: str,
        step: int,
        iterations: int,
        images: int,
        elapsed: float,
        losses: Mapping[str, torch.Tensor],
    ) -> None:
        rate = step / elapsed if elapsed > 0 else 0.0
        eta = (iterations - step) / rate if rate > 0 else 0.0
        parts = " ".join(f"{name}={float(loss.detach()):.4g}" for name, loss in losses.items())
        log.info(
            "%sit %d/%d (global %d/%d) %.2f it/s %.2f img/s ETA %s lr=%.4g %s",
            f"{label} " if label else "",
            step,
            iterations,
            self.iteration,
            self.total_iterations,
            rate,
            images / elapsed if elapsed > 0 else 0.0,
            _fmt_seconds(eta),
            self.optimizer.param_groups[0]["lr"],
            parts,
        )

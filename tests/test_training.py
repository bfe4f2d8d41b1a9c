"""The weighted training step: head learning rates, schedule, divergence, stopping."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer_image.engine import compile as compile_module
from trainer_image.engine.batches import forever
from trainer_image.engine.compile import maybe_compile, missing_toolchain, resolve_compile
from trainer_image.engine.config import TrainConfig
from trainer_image.engine.hooks import (
    CheckpointHook,
    HeartbeatHook,
    HookBase,
    IntervalState,
    StopHook,
)
from trainer_image.engine.loop import Trainer
from trainer_image.engine.optim import (
    apply_weights,
    build_param_groups,
    clip_gradients,
    cosine_factor,
    set_learning_rates,
)
from trainer_image.weighting.base import WeightingStrategy
from trainer_image.weighting.fixed import FixedWeights
from trainer_image.weighting.uncertainty import UncertaintyWeighting


class TwoHeadNet(nn.Module):
    """The trainer contract at its smallest: a shared layer, two heads, two named losses."""

    loss_names = ("a", "b")

    def __init__(self, nan_at_call: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Linear(3, 4)
        self.head_a = nn.Linear(4, 1)
        self.head_b = nn.Linear(4, 1)
        self.nan_at_call = nan_at_call
        self.calls = 0
        self.seen: list[dict[str, float]] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        features = torch.relu(self.backbone(batch["x"]))
        losses = {
            "a": (self.head_a(features).squeeze(1) - batch["ya"]).pow(2).mean(),
            "b": (self.head_b(features).squeeze(1) - batch["yb"]).abs().mean(),
        }
        if self.calls == self.nan_at_call:
            losses["b"] = losses["b"] * math.nan
        self.seen.append({name: float(loss.detach()) for name, loss in losses.items()})
        return losses

    def loss_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"a": list(self.head_a.parameters()), "b": list(self.head_b.parameters())}


def make_batches(count: int, size: int = 4) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        {
            "x": torch.randn(size, 3, generator=generator),
            "ya": torch.randn(size, generator=generator),
            "yb": 10 * torch.randn(size, generator=generator),
        }
        for _ in range(count)
    ]


PLAIN = TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.0, grad_clip=None, log_every=0)


def test_param_groups_put_each_head_at_lr_over_lambda() -> None:
    model = TwoHeadNet()
    groups = build_param_groups(model)
    assert [g["name"] for g in groups] == ["shared", "head:a", "head:b"]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    config = TrainConfig(lr=0.02)
    optimizer = torch.optim.SGD(groups, lr=config.lr)
    apply_weights(optimizer, {"a": 4.0, "b": 0.5}, config)
    factor = set_learning_rates(optimizer, 0, 100, config)
    assert factor == 1.0
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.02, 0.005, 0.04])
    # Weights change between intervals: the head rates follow.
    apply_weights(optimizer, {"a": 1.0, "b": 2.0}, config)
    set_learning_rates(optimizer, 50, 100, config)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.01, 0.005])
    off = TrainConfig(lr=0.02, head_lr_scaling=False)
    apply_weights(optimizer, {"a": 4.0, "b": 0.5}, off)
    set_learning_rates(optimizer, 0, 100, off)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.02, 0.02, 0.02])


def test_a_shared_parameter_claimed_by_two_losses_stays_shared() -> None:
    model = TwoHeadNet()
    model.loss_parameters = lambda: {  # type: ignore[method-assign]
        "a": [*model.head_a.parameters(), model.backbone.weight],
        "b": [*model.head_b.parameters(), model.backbone.weight],
    }
    groups = {g["name"]: g["params"] for g in build_param_groups(model)}
    assert any(p is model.backbone.weight for p in groups["shared"])
    assert all(p is not model.backbone.weight for p in groups["head:a"] + groups["head:b"])


def test_head_step_does_not_depend_on_its_weight_but_the_backbone_step_does() -> None:
    """Head gradient λ∇l at lr/λ moves the head by lr∇l whatever λ is (plain SGD)."""
    steps = {}
    for weight in (1.0, 8.0):
        model = TwoHeadNet()
        trainer = Trainer(model, PLAIN, total_iterations=1000)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer.train_interval(iter(make_batches(1)), FixedWeights({"a": weight, "b": 1.0}), 1)
        steps[weight] = {k: model.state_dict()[k] - before[k] for k in before}
    assert torch.allclose(steps[1.0]["head_a.weight"], steps[8.0]["head_a.weight"], atol=1e-7)
    assert torch.equal(steps[1.0]["head_b.weight"], steps[8.0]["head_b.weight"])
    assert not torch.allclose(steps[1.0]["backbone.weight"], steps[8.0]["backbone.weight"])


def test_cosine_factor_by_hand() -> None:
    assert cosine_factor(0, 10) == 1.0
    assert cosine_factor(5, 10) == pytest.approx(0.5)
    assert cosine_factor(10, 10) == pytest.approx(0.0)
    assert cosine_factor(25, 10) == pytest.approx(0.0)
    assert cosine_factor(5, 10, min_factor=0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    with pytest.raises(ValueError):
        cosine_factor(0, 0)


def test_two_intervals_follow_one_schedule() -> None:
    """Two intervals of 3 iterations train exactly as one of 6: the cosine spans the run."""
    batches = make_batches(6)
    config = TrainConfig(lr=0.05, grad_clip=None, log_every=0)
    whole_model = TwoHeadNet()
    whole = Trainer(whole_model, config, total_iterations=6)
    whole.train_interval(iter(batches), FixedWeights.equal("ab"), 6)

    split_model = TwoHeadNet()
    split = Trainer(split_model, config, total_iterations=6)
    stream = iter(batches)
    first = split.train_interval(stream, FixedWeights.equal("ab"), 3)
    assert split.iteration == 3
    assert split.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * cosine_factor(2, 6))
    split.train_interval(stream, FixedWeights.equal("ab"), 3)
    assert split.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * cosine_factor(5, 6))
    for key, value in whole_model.state_dict().items():
        assert torch.equal(value, split_model.state_dict()[key]), key
    assert first.iterations == 3 and not first.diverged


def test_reported_losses_are_the_mean_over_the_interval() -> None:
    model = TwoHeadNet()
    result = Trainer(model, PLAIN, total_iterations=4).train_interval(
        iter(make_batches(4)), FixedWeights({"a": 1.0, "b": 0.1}), 4
    )
    for name in ("a", "b"):
        assert result.losses[name] == pytest.approx(sum(s[name] for s in model.seen) / 4)
    assert result.iterations == 4 and result.images == 16
    assert result.weights == {"a": 1.0, "b": 0.1}


def test_nan_loss_stops_the_interval_as_diverged_without_touching_the_weights() -> None:
    model = TwoHeadNet(nan_at_call=3)
    trainer = Trainer(model, PLAIN, total_iterations=10)
    stream = iter(make_batches(5))
    trainer.train_interval(stream, FixedWeights.equal("ab"), 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = trainer.train_interval(stream, FixedWeights.equal("ab"), 3)
    assert result.diverged and result.iterations == 0
    assert "b" in result.reason and "iteration 2" in result.reason
    assert trainer.iteration == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_stop_hook_is_checked_before_every_step_and_the_heartbeat_hook_after() -> None:
    model = TwoHeadNet()
    trainer = Trainer(model, PLAIN, total_iterations=10)
    beats: list[int] = []
    result = trainer.train_interval(
        iter(make_batches(10)),
        FixedWeights.equal("ab"),
        10,
        hooks=[
            StopHook(lambda: model.calls >= 3),
            HeartbeatHook(lambda: beats.append(model.calls), seconds=0.0),
        ],
    )
    assert result.stopped and not result.diverged
    assert result.iterations == 3 and model.calls == 3
    assert beats == [1, 2, 3]


def test_clipping_limits_each_group_by_its_effective_step() -> None:
    model = TwoHeadNet()
    optimizer = torch.optim.SGD(build_param_groups(model), lr=1.0)
    apply_weights(optimizer, {"a": 100.0, "b": 1.0}, TrainConfig())
    for param in model.parameters():
        param.grad = torch.full_like(param, 10.0)
    clip_gradients(optimizer, max_norm=1.0)
    for group in optimizer.param_groups:
        grads = [p.grad for p in group["params"]]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)).item()
        # head a: effective gradient = grad / 100; its raw norm is only cut to 100
        limit = 100.0 if group["name"] == "head:a" else 1.0
        raw = 10.0 * math.sqrt(sum(p.numel() for p in group["params"]))
        assert norm == pytest.approx(min(raw, limit), rel=1e-5), group["name"]


def test_uncertainty_parameters_train_in_their_own_group() -> None:
    model = TwoHeadNet()
    strategy = UncertaintyWeighting(["a", "b"])
    trainer = Trainer(
        model, PLAIN, total_iterations=50, strategy_parameters=list(strategy.parameters())
    )
    assert trainer.optimizer.param_groups[-1]["name"] == "strategy"
    assert trainer.optimizer.param_groups[-1]["weight_decay"] == 0.0
    result = trainer.train_interval(forever(make_batches(4)), strategy, 20)
    # b's loss is ~10x a's: its learned weight must be the smaller one.
    assert result.weights["b"] < result.weights["a"]
    assert strategy.log_vars.grad is not None


def test_forever_cycles_and_refuses_an_empty_loader() -> None:
    stream = forever([1, 2])
    assert [next(stream) for _ in range(5)] == [1, 2, 1, 2, 1]
    with pytest.raises(ValueError, match="no batches"):
        next(forever([]))


# --------------------------------------------------------------------------- CLI settings

TRAINER_COMMANDS = ["worker", "transfer", "train"]


def parse_trainer_flags(command: str, *flags: str) -> argparse.Namespace:
    """The flags of ``adaseg COMMAND`` as its own parser reads them (required ones filled)."""
    import importlib

    from controller_service.cli import COMMANDS

    module = importlib.import_module(COMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"adaseg {command}")
    module.add_arguments(parser)
    required = {
        "worker": ["--controller", "http://c", "--run", "r"],
        "transfer": ["--controller", "http://c", "--policy-run", "r", "--epochs", "1"],
        "train": ["--strategy", "equal", "--epochs", "1"],
    }[command]
    return parser.parse_args([*required, "--data", "/d", "--store", "file:///s", *flags])


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [
        (None, "cuda", True),  # auto: compile where a GPU is
        (None, "cuda:1", True),
        (None, "cpu", False),
        (True, "cpu", True),  # --compile forces it
        (False, "cuda", False),  # --no-compile turns it off
        (True, "cuda", True),
    ],
)
def test_resolve_compile(setting: bool | None, device: str, expected: bool) -> None:
    assert resolve_compile(setting, torch.device(device)) is expected


def test_the_trainer_compiles_as_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    Trainer(TwoHeadNet(), TrainConfig(), total_iterations=1)  # auto on CPU: no
    assert compiled == []
    trainer = Trainer(TwoHeadNet(), TrainConfig(compile=True), total_iterations=1)
    assert compiled == [trainer.model]


def executable(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_compile_falls_back_to_eager_when_triton_has_no_c_compiler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No $CC and no gcc/clang on PATH (the trainer image's CUDA runtime base): the model is
    trained eagerly, with one warning however many trainers ask. No GPU is needed: the check
    happens before anything touches the device."""
    compiled: list[nn.Module] = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    monkeypatch.setattr(compile_module, "_warned", set())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("CC", raising=False)
    cuda, module = torch.device("cuda"), nn.Linear(2, 2)
    executable(bin_dir, "cc")  # Triton does not look for cc: still missing
    with caplog.at_level(logging.WARNING, logger="adaseg.train"):
        assert maybe_compile(module, None, cuda) is module  # the default on CUDA
        assert maybe_compile(module, True, cuda) is module  # --compile
    assert compiled == []
    (warning,) = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert "eager mode" in warning and "Triton needs a C compiler" in warning

    gcc = executable(bin_dir, "gcc")
    assert maybe_compile(module, None, cuda) is module and compiled == [module]
    assert maybe_compile(module, False, cuda) is module and compiled == [module]  # --no-compile

    # $CC is used as given: one naming no executable is missing although gcc is there ...
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert "no-such-cc" in missing_toolchain(cuda)
    # ... and one naming an executable is enough without gcc or clang on PATH
    gcc.unlink()
    monkeypatch.setenv("CC", str(executable(tmp_path, "my-cc")))
    assert missing_toolchain(cuda) is None
    # on CPU (compile only with --compile) nothing is checked: Inductor's C++ path
    monkeypatch.delenv("CC")
    assert missing_toolchain(torch.device("cpu")) is None


def test_the_head_rule_follows_the_strategy_not_its_class() -> None:
    """The loop asks a strategy for ``head_lr_weights``; any strategy that offers them gets
    lr/λ heads, one that offers none trains every head at lr."""

    class Halved(WeightingStrategy):
        weights = {"a": 2.0, "b": 0.5}
        head_lr_weights = {"a": 2.0, "b": 0.5}

        def combine(self, losses):
            return sum(self.weights[name] * loss for name, loss in losses.items())

    class Plain(Halved):
        head_lr_weights = None

    lrs = {}
    for strategy in (Halved(), Plain()):
        trainer = Trainer(TwoHeadNet(), PLAIN, total_iterations=100)
        trainer.train_interval(iter(make_batches(1)), strategy, 1)
        lrs[type(strategy).__name__] = [g["lr"] for g in trainer.optimizer.param_groups]
    factor = cosine_factor(0, 100)
    assert lrs["Halved"] == pytest.approx([0.1 * factor, 0.05 * factor, 0.2 * factor])
    assert lrs["Plain"] == pytest.approx([0.1 * factor] * 3)


def test_hooks_run_in_order_around_every_step_and_see_the_result() -> None:
    calls: list[str] = []

    class Recorder(HookBase):
        def __init__(self, name: str) -> None:
            self.name = name

        def before_train(self, state: IntervalState) -> None:
            calls.append(f"{self.name}:before_train")

        def before_step(self, state: IntervalState) -> None:
            calls.append(f"{self.name}:before_step{state.done}")

        def after_step(self, state: IntervalState) -> None:
            calls.append(f"{self.name}:after_step{state.done}")

        def after_train(self, state: IntervalState) -> None:
            calls.append(f"{self.name}:after_train{state.result.iterations}")

    saved: list[int] = []
    trainer = Trainer(TwoHeadNet(), PLAIN, total_iterations=10)
    hooks = [Recorder("x"), Recorder("y"), CheckpointHook(lambda s: saved.append(s.done))]
    trainer.train_interval(iter(make_batches(2)), FixedWeights.equal("ab"), 2, hooks=hooks)
    assert calls == [
        "x:before_train", "y:before_train",
        "x:before_step0", "y:before_step0", "x:after_step1", "y:after_step1",
        "x:before_step1", "y:before_step1", "x:after_step2", "y:after_step2",
        "x:after_train2", "y:after_train2",
    ]  # fmt: skip
    assert saved == [2]
    # a stopped interval is no resume point
    stopped = trainer.train_interval(
        iter(make_batches(2)), FixedWeights.equal("ab"), 2, hooks=[StopHook(lambda: True), hooks[2]]
    )
    assert stopped.stopped and stopped.iterations == 0 and saved == [2]


@pytest.mark.parametrize("command", TRAINER_COMMANDS)
def test_every_trainer_cli_sets_compile_momentum_and_weight_decay(command: str) -> None:
    from trainer_image.cli.base import train_config

    default = train_config(parse_trainer_flags(command))
    assert (default.compile, default.momentum, default.weight_decay) == (None, 0.9, 1e-4)
    assert (default.lr, default.momentum, default.weight_decay) == (
        TrainConfig().lr,
        TrainConfig().momentum,
        TrainConfig().weight_decay,
    )
    assert train_config(parse_trainer_flags(command, "--compile")).compile is True
    assert train_config(parse_trainer_flags(command, "--no-compile")).compile is False
    config = train_config(parse_trainer_flags(command, "--momentum", "0", "--weight-decay", "5e-4"))
    assert (config.momentum, config.weight_decay) == (0.0, 5e-4)


@pytest.mark.parametrize("command", TRAINER_COMMANDS)
@pytest.mark.parametrize("flag", ["--momentum", "--weight-decay"])
@pytest.mark.parametrize("value", ["-0.1", "nan", "inf", "x"])
def test_momentum_and_weight_decay_must_be_finite_and_non_negative(
    command: str, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_trainer_flags(command, flag, value)
    assert exit_.value.code == 2
    assert f"argument {flag}: must be" in capsys.readouterr().err


def test_train_config_validates_momentum_and_weight_decay() -> None:
    for name in ("momentum", "weight_decay"):
        for bad in (-1e-3, math.nan, math.inf):
            with pytest.raises(ValueError, match=f"{name} must be finite and >= 0"):
                TrainConfig(**{name: bad})


def test_momentum_and_weight_decay_reach_the_optimizer() -> None:
    trainer = Trainer(TwoHeadNet(), TrainConfig(momentum=0.5, weight_decay=0.0), 1)
    groups = trainer.optimizer.param_groups
    assert [(g["momentum"], g["weight_decay"]) for g in groups] == [(0.5, 0.0)] * len(groups)


@pytest.mark.parametrize("command", TRAINER_COMMANDS)
def test_store_retry_seconds_flag_and_environment(
    command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    from trainer_image.cli.base import open_trainer_store

    monkeypatch.delenv("ADASEG_STORE_RETRY_SECONDS", raising=False)
    assert parse_trainer_flags(command).store_retry_seconds == 300.0
    monkeypatch.setenv("ADASEG_STORE_RETRY_SECONDS", "45")
    args = parse_trainer_flags(command)
    assert args.store_retry_seconds == 45.0
    assert parse_trainer_flags(command, "--store-retry-seconds", "0").store_retry_seconds == 0.0
    args.store = tmp_path.as_uri()
    store = open_trainer_store(args)  # every command's store rides out outages that long
    assert store.retry_seconds == 45.0 and store.uri == tmp_path.as_uri()
    monkeypatch.setenv("ADASEG_STORE_RETRY_SECONDS", "soon")
    with pytest.raises(SystemExit) as exit_:
        parse_trainer_flags(command)
    assert exit_.value.code == 2
    assert "argument --store-retry-seconds: must be a number" in capsys.readouterr().err

"""``adaseg train``: the static baselines (equal, published, any fixed vector, uncertainty,
GradNorm), trained and evaluated exactly like a transfer run and stored the same way
(``transfers/{id}/metrics.json`` and ``final.pt``), so results compare like with like."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from trainer_image.cli.base import ExitCode, fail
from trainer_image.cli.epoch_job import add_job_arguments, run_epoch_job


def parse_weights(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainer_image.weighting.registry import strategy_names

    parser.add_argument("--strategy", required=True, choices=strategy_names())
    parser.add_argument(
        "--weights",
        type=parse_weights,
        default=None,
        help="with --strategy fixed: one weight per loss, in the model's loss order (a,b,c)",
    )
    parser.add_argument("--out-id", default=None, help="id under transfers/ (default: random)")
    add_job_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from trainer_image.jobs.train import ConstantStrategy
    from trainer_image.weighting.registry import build_strategy

    if (args.strategy == "fixed") != (args.weights is not None):
        message = "--weights goes with --strategy fixed, and only with it"
        return fail("train", message, ExitCode.USAGE)
    job_id = args.out_id or f"train-{args.strategy}-{uuid.uuid4().hex[:8]}"
    metadata: dict[str, Any] = {"strategy": args.strategy, "mode": f"static:{args.strategy}"}

    def make_source(model: Any, dist: Any) -> ConstantStrategy:
        weights = None
        if args.weights is not None:
            names = list(model.loss_names)
            if len(args.weights) != len(names):
                raise ValueError(
                    f"--weights has {len(args.weights)} values; the model's losses are {names}"
                )
            weights = dict(zip(names, args.weights, strict=True))
        return ConstantStrategy(build_strategy(args.strategy, model, weights))

    return run_epoch_job("train", args, job_id, metadata, make_source)

"""The shell ``adaseg transfer`` and ``adaseg train`` share: their flags, their options, and
running the job (logging, SIGTERM, errors as exit codes, the metrics printed on stdout)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from trainer_image.cli.base import (
    EXIT_CODES,
    ExitCode,
    add_data_arguments,
    fail,
    open_trainer_store,
    positive_int,
    setup_logging,
    train_config,
)


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of every E-epoch training job (transfer and train)."""
    add_data_arguments(parser)
    parser.add_argument("--epochs", type=positive_int, required=True)
    parser.add_argument(
        "--iterations-per-epoch", type=positive_int, default=None, help="default: one full pass"
    )
    parser.add_argument("--split", default="train", help="split to train on (all of it)")
    parser.add_argument("--val-split", default="val", help="split PQ is reported on")


def job_options(args: argparse.Namespace, job_id: str, metadata: dict[str, Any]) -> Any:
    """The flags as ``JobOptions``; raises ``SetupError`` for a missing data directory."""
    from trainer_image.jobs.epochs import JobOptions
    from trainer_image.jobs.session import DataOptions, SetupError

    if not args.data.is_dir():
        raise SetupError(f"data directory {args.data} does not exist")
    return JobOptions(
        job_id=job_id,
        data=DataOptions(
            root=args.data,
            split=args.split,
            batch_size=args.batch_size,
            workers=args.workers,
            crop_size=args.crop_size,
            seed=args.seed,
        ),
        epochs=args.epochs,
        iterations_per_epoch=args.iterations_per_epoch,
        device=args.device,
        model=args.model,
        model_config=args.model_config,
        train=train_config(args),
        val_split=args.val_split,
        eval_batch_size=args.eval_batch_size,
        metadata=metadata,
    )


def run_epoch_job(
    command: str,
    args: argparse.Namespace,
    job_id: str,
    metadata: dict[str, Any],
    make_source: Callable[[Any, Any], Any],
) -> int:
    """Run the job; ``make_source(model, dist)`` says where its weights come from."""
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(args.log_level, quiet=rank != 0)
    from controller_service.contract.client import ControllerError
    from controller_service.contract.store import StoreError
    from trainer_image.data.coco_panoptic import DatasetError
    from trainer_image.engine.checkpoint import CheckpointError
    from trainer_image.jobs.distributed import RankFailed
    from trainer_image.jobs.epochs import dumps_metrics, run_job
    from trainer_image.jobs.session import SetupError
    from trainer_image.jobs.stop import StopFlag

    stop = StopFlag()
    try:
        options = job_options(args, job_id, metadata)
        store = open_trainer_store(args, interrupt=stop.terminated)
    except (SetupError, StoreError, ValueError) as exc:
        return fail(command, exc, ExitCode.USAGE)
    with stop.sigterm():
        try:
            result = run_job(options, store, make_source, should_stop=stop)
        except ControllerError as exc:
            return fail(command, f"controller: {exc}", ExitCode.ERROR)
        except SetupError as exc:  # flags that do not fit the data, model or device
            return fail(command, exc, ExitCode.USAGE)
        except (DatasetError, CheckpointError, StoreError, ValueError, RankFailed) as exc:
            return fail(command, exc, ExitCode.ERROR)
    if result.metrics is not None and rank == 0:
        print(dumps_metrics(result.metrics))
        sys.stdout.flush()
    return int(EXIT_CODES[result.ending])

"""``adaseg transfer``: train a fresh model with loss weights from a finished run's policy.

Runs on one device, or data-parallel with the same flags under torchrun::

    torchrun --nproc_per_node 2 -m controller_service transfer --controller URL ...
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any

from trainer_image.worker_cli import (
    add_data_arguments,
    fail,
    positive_int,
    setup_logging,
    train_config,
)

EXIT_ERROR = 1
EXIT_USAGE = 2


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of every E-epoch training job (transfer and train)."""
    add_data_arguments(parser)
    parser.add_argument("--epochs", type=positive_int, required=True)
    parser.add_argument(
        "--iterations-per-epoch", type=positive_int, default=None, help="default: one full pass"
    )
    parser.add_argument("--split", default="train", help="split to train on (all of it)")
    parser.add_argument("--val-split", default="val", help="split PQ is reported on")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--controller", required=True, help="controller URL, http://host:port")
    parser.add_argument("--policy-run", required=True, help="finished run whose policy to use")
    parser.add_argument(
        "--mode", default="ensemble", choices=("ensemble", "final", "static-pred", "static-final")
    )
    parser.add_argument("--gamma", type=float, default=0.9, help="Eq. 7 ensemble decay")
    parser.add_argument(
        "--transfer-id", default=None, help="id under transfers/ (default: random); resumes"
    )
    add_job_arguments(parser)


def job_options(args: argparse.Namespace, job_id: str, metadata: dict[str, Any]) -> Any:
    """The flags as ``JobOptions``; raises ``SetupError`` for a missing data directory."""
    from trainer_image.session import DataOptions, SetupError
    from trainer_image.transfer import JobOptions

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


def run_cli_job(
    command: str,
    args: argparse.Namespace,
    job_id: str,
    metadata: dict[str, Any],
    make_source: Callable[[Any, Any], Any],
) -> int:
    """Shared shell of ``transfer`` and ``train``: logging, errors, SIGTERM, printing metrics."""
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(args.log_level, quiet=rank != 0)
    from controller_service.client import ControllerError
    from controller_service.store import StoreError, open_store
    from trainer_image.checkpoint import CheckpointError
    from trainer_image.data.coco_panoptic import DatasetError
    from trainer_image.session import SetupError
    from trainer_image.transfer import RankFailed, dumps_metrics, run_job
    from trainer_image.worker import StopFlag

    try:
        options = job_options(args, job_id, metadata)
        store = open_store(args.store)
    except (SetupError, StoreError, ValueError) as exc:
        return fail(command, exc, EXIT_USAGE)
    with StopFlag().sigterm() as stop:
        try:
            result = run_job(options, store, make_source, should_stop=stop)
        except ControllerError as exc:
            return fail(command, f"controller: {exc}", EXIT_ERROR)
        except SetupError as exc:  # flags that do not fit the data, model or device
            return fail(command, exc, EXIT_USAGE)
        except (DatasetError, CheckpointError, StoreError, ValueError) as exc:
            return fail(command, exc, EXIT_ERROR)
        except RankFailed as exc:
            return fail(command, exc, EXIT_ERROR)
    if result.metrics is not None and rank == 0:
        print(dumps_metrics(result.metrics))
        sys.stdout.flush()
    return result.exit_code


def main(args: argparse.Namespace) -> int:
    from trainer_image.transfer import ControllerWeights

    job_id = args.transfer_id or f"transfer-{uuid.uuid4().hex[:10]}"
    metadata = {"mode": args.mode, "policy_run": args.policy_run, "gamma": args.gamma}
    clients: list[Any] = []

    def make_source(model: Any, dist: Any) -> ControllerWeights:
        client = None
        if dist.main:  # only rank 0 talks to the controller
            from controller_service.client import ControllerClient

            client = ControllerClient(args.controller)
            clients.append(client)
            run = client.get_run(args.policy_run)
            if run["status"] != "finished":
                raise ValueError(
                    f"run {args.policy_run} is {run['status']}, not finished: its policy "
                    "snapshots are incomplete"
                )
            if list(run["loss_names"]) != list(model.loss_names):
                raise ValueError(
                    f"run {args.policy_run} has losses {run['loss_names']}, the model "
                    f"{list(model.loss_names)}"
                )
        return ControllerWeights(
            client, args.policy_run, args.mode, args.epochs, list(model.loss_names), args.gamma
        )

    try:
        return run_cli_job("transfer", args, job_id, metadata, make_source)
    finally:
        for client in clients:
            client.close()

"""``adaseg transfer``: train a fresh model with loss weights from a finished run's policy.

Runs on one device, or data-parallel with the same flags under torchrun::

    torchrun --nproc_per_node 2 -m controller_service transfer --controller URL ...
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from trainer_image.cli.epoch_job import add_job_arguments, run_epoch_job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from controller_service.contract.external import DEFAULT_FIRST_EPOCH, FIRST_EPOCHS
    from controller_service.search.options import (
        DEFAULT_GAMMA,
        DEFAULT_TRANSFER_MODE,
        TRANSFER_MODES,
    )

    parser.add_argument("--controller", required=True, help="controller URL, http://host:port")
    parser.add_argument("--policy-run", required=True, help="finished run whose policy to use")
    parser.add_argument("--mode", default=DEFAULT_TRANSFER_MODE, choices=TRANSFER_MODES)
    parser.add_argument("--gamma", type=float, default=DEFAULT_GAMMA, help="Eq. 7 ensemble decay")
    parser.add_argument(
        "--first-epoch",
        default=DEFAULT_FIRST_EPOCH,
        choices=FIRST_EPOCHS,
        help="dynamic modes' epoch 1: weights 1 (the paper's pseudo epoch) or the policy's "
        "weights for the search's initial losses (a transfer on the searched task)",
    )
    parser.add_argument(
        "--transfer-id", default=None, help="id under transfers/ (default: random); resumes"
    )
    add_job_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from trainer_image.jobs.transfer import ControllerWeights, check_policy_run

    job_id = args.transfer_id or f"transfer-{uuid.uuid4().hex[:10]}"
    metadata = {
        "mode": args.mode,
        "policy_run": args.policy_run,
        "gamma": args.gamma,
        "first_epoch": args.first_epoch,
    }
    clients: list[Any] = []

    def make_source(model: Any, dist: Any) -> ControllerWeights:
        client, search_losses = None, None
        if dist.main:  # only rank 0 talks to the controller
            from controller_service.contract.client import ControllerClient

            client = ControllerClient(args.controller)
            clients.append(client)
            run = client.get_run(args.policy_run)
            check_policy_run(run, list(model.loss_names))
            search_losses = run.initial_losses
        return ControllerWeights(
            client,
            args.policy_run,
            args.mode,
            args.epochs,
            list(model.loss_names),
            args.gamma,
            first_epoch=args.first_epoch,
            search_losses=search_losses,
        )

    try:
        return run_epoch_job("transfer", args, job_id, metadata, make_source)
    finally:
        for client in clients:
            client.close()

"""``adaseg worker``: train population members leased from a controller (one trainer pod)."""

from __future__ import annotations

import argparse

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--controller", required=True, help="controller URL, http://host:port")
    parser.add_argument("--run", required=True, help="run id")
    add_data_arguments(parser)
    parser.add_argument("--worker-id", default=None, help="default: $HOSTNAME-pid")
    parser.add_argument(
        "--iterations", type=positive_int, default=None, help="iterations per interval (q)"
    )
    parser.add_argument("--split", default="train", help="split the proxy split is carved from")
    parser.add_argument(
        "--proxy-val", default="0.1", help="proxy-val share: a fraction, or a number of images"
    )
    parser.add_argument("--max-assignments", type=positive_int, default=None)
    parser.add_argument(
        "--max-consecutive-failures",
        type=positive_int,
        default=3,
        help="exit with code 3 after this many assignments in a row could not be trained "
        "(each is reported failed): a worker that fails everything is broken",
    )


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    from controller_service.contract.client import ControllerClient, ControllerError, NotFound
    from controller_service.contract.store import StoreError
    from trainer_image.data.coco_panoptic import DatasetError
    from trainer_image.data.split import parse_proxy_val
    from trainer_image.engine.checkpoint import CheckpointError
    from trainer_image.jobs.member import Worker, WorkerOptions, default_worker_id
    from trainer_image.jobs.session import DataOptions, SetupError, resolve_device
    from trainer_image.jobs.stop import StopFlag

    stop = StopFlag()
    try:
        if not args.data.is_dir():
            raise SetupError(f"data directory {args.data} does not exist")
        data = DataOptions(
            root=args.data,
            split=args.split,
            proxy_val=parse_proxy_val(args.proxy_val),
            batch_size=args.batch_size,
            workers=args.workers,
            crop_size=args.crop_size,
            seed=args.seed,
        )
        options = WorkerOptions(
            run=args.run,
            data=data,
            worker_id=args.worker_id or default_worker_id(),
            device=str(resolve_device(args.device)),
            iterations=args.iterations,
            model=args.model,
            model_config=args.model_config,
            train=train_config(args),
            eval_batch_size=args.eval_batch_size,
            max_assignments=args.max_assignments,
            max_consecutive_failures=args.max_consecutive_failures,
        )
        store = open_trainer_store(args, interrupt=stop.terminated)
    except (SetupError, StoreError, ValueError) as exc:
        return fail("worker", exc, ExitCode.USAGE)
    # a report must outlive a controller restart, or a store outage the controller is riding
    # out: calls to it retry as long as the store's do (0: the client's few quick retries)
    retry_seconds = args.store_retry_seconds or None
    with ControllerClient(args.controller, retry_seconds=retry_seconds) as client, stop.sigterm():
        try:
            return int(EXIT_CODES[Worker(client, store, options, stop).run()])
        except NotFound as exc:
            message = f"run {args.run} not found on {args.controller} ({exc})"
            return fail("worker", message, ExitCode.ERROR)
        except ControllerError as exc:
            return fail("worker", f"controller {args.controller}: {exc}", ExitCode.ERROR)
        except SetupError as exc:  # flags that do not fit the data, model or device
            return fail("worker", exc, ExitCode.USAGE)
        except (DatasetError, CheckpointError, StoreError) as exc:
            return fail("worker", exc, ExitCode.ERROR)

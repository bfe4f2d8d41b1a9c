"""``adaseg worker``: train population members leased from a controller (one trainer pod)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

EXIT_ERROR = 1
EXIT_USAGE = 2


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (momentum, weight decay): argparse rejects the rest at parse time."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text!r}")
    return value


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. \'{"preset": "tiny"}\'')
    return value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every trainer command shares: data, batching, device, model, optimisation."""
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="dataset root: COCO 2017, detectron2's COCO or ADE20K, or adaseg's layout",
    )
    parser.add_argument("--store", required=True, help="file:///abs/dir or s3://bucket/prefix")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto")
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument(
        "--eval-batch-size", type=positive_int, default=None, help="default: --batch-size"
    )
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--crop-size", type=positive_int, default=None)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="data split/order and initialisation seed (worker: default the run's seed, keep it "
        "equal on every worker; transfer/train: default 0)",
    )
    parser.add_argument(
        "--model",
        default="panoptic_deeplab",
        help="registered model name (worker: used by round 0; later rounds rebuild the model "
        "from their checkpoint)",
    )
    parser.add_argument(
        "--model-config",
        type=json_object,
        default=None,
        help='JSON object, e.g. \'{"preset": "gpu"}\'',
    )
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    parser.add_argument(
        "--weight-decay", type=non_negative_float, default=1e-4, help="SGD weight decay (L2)"
    )
    parser.add_argument("--grad-clip", type=float, default=10.0, help="0 turns clipping off")
    parser.add_argument(
        "--no-head-lr-scaling",
        action="store_true",
        help="train every head at lr instead of lr/lambda_i (the paper's rule)",
    )
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    add_compile_argument(parser)
    parser.add_argument("--log-every", type=int, default=20, help="log every N iterations")
    parser.add_argument("--log-level", default="info")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    """``--compile`` / ``--no-compile``, default unset: ``TrainConfig.compile = None`` means
    compile where it pays (CUDA), see ``training.resolve_compile``."""
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model (default: on CUDA, off on CPU)",
    )


def train_config(args: argparse.Namespace) -> Any:
    from trainer_image.training import TrainConfig

    return TrainConfig(
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip or None,
        head_lr_scaling=not args.no_head_lr_scaling,
        amp=not args.no_amp,
        compile=args.compile,
        log_every=args.log_every,
    )


def setup_logging(level: str, quiet: bool = False) -> None:
    """One line per event on stderr: what a pod log shows (``quiet``: warnings only, for
    torchrun ranks other than 0). httpx's per-request lines are left out."""
    logging.basicConfig(
        level=logging.WARNING if quiet else getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


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


def fail(command: str, message: object, code: int) -> int:
    """A fatal error: one line on stderr that names what is wrong, and the exit code."""
    print(f"adaseg {command}: error: {message}", file=sys.stderr)
    return code


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    from controller_service.client import ControllerClient, ControllerError, NotFound
    from controller_service.store import StoreError, open_store
    from trainer_image.checkpoint import CheckpointError
    from trainer_image.data.coco_panoptic import DatasetError
    from trainer_image.data.split import parse_proxy_val
    from trainer_image.session import DataOptions, SetupError, resolve_device
    from trainer_image.worker import StopFlag, Worker, WorkerOptions, default_worker_id

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
        )
        store = open_store(args.store)
    except (SetupError, StoreError, ValueError) as exc:
        return fail("worker", exc, EXIT_USAGE)
    with ControllerClient(args.controller) as client, StopFlag().sigterm() as stop:
        try:
            return Worker(client, store, options, stop).run()
        except NotFound as exc:
            return fail("worker", f"run {args.run} not found on {args.controller} ({exc})", 1)
        except ControllerError as exc:
            return fail("worker", f"controller {args.controller}: {exc}", EXIT_ERROR)
        except SetupError as exc:  # flags that do not fit the data, model or device
            return fail("worker", exc, EXIT_USAGE)
        except (DatasetError, CheckpointError, StoreError) as exc:
            return fail("worker", exc, EXIT_ERROR)

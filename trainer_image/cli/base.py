"""What every trainer command shares: exit codes, logging, flag types, the training flags.

The exit codes are defined here and nowhere else; jobs say how they ended
(``jobs/ending.py``) and :data:`EXIT_CODES` turns that into the process status
a Kubernetes Job or a shell sees.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from enum import IntEnum
from pathlib import Path
from typing import Any

from trainer_image import DEFAULT_MODEL
from trainer_image.jobs.ending import Ending
from trainer_image.jobs.store_retry import DEFAULT_RETRY_SECONDS, RETRY_SECONDS_ENV


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # the job could not be done: controller, store or data failed, or it diverged
    USAGE = 2  # flags that cannot work (missing data directory, no GPU, bad model config)
    FAILING = 3  # a worker failed --max-consecutive-failures assignments in a row: restart it
    TERMINATED = 143  # 128 + SIGTERM: what a shell reports for a process it terminated


EXIT_CODES: dict[Ending, ExitCode] = {
    Ending.FINISHED: ExitCode.OK,
    Ending.STOPPED: ExitCode.TERMINATED,
    Ending.DIVERGED: ExitCode.ERROR,
    Ending.FAILING: ExitCode.FAILING,
}


def fail(command: str, message: object, code: ExitCode) -> int:
    """A fatal error: one line on stderr that names what is wrong, and the exit code."""
    print(f"adaseg {command}: error: {message}", file=sys.stderr)
    return int(code)


def setup_logging(level: str, quiet: bool = False) -> None:
    """One line per event on stderr: what a pod log shows (``quiet``: warnings only, for
    torchrun ranks other than 0). httpx's per-request lines are left out."""
    logging.basicConfig(
        level=logging.WARNING if quiet else getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


# -- flag types: argparse rejects bad values at parse time (exit 2, the flag named) --------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (momentum, weight decay, seconds)."""
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


# -- the flags of every training command (worker, transfer, train) --------------------------


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every trainer command shares: data, store, batching, device, model, optimisation."""
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="dataset root: COCO 2017, detectron2's COCO or ADE20K, or adaseg's layout",
    )
    parser.add_argument("--store", required=True, help="file:///abs/dir or s3://bucket/prefix")
    parser.add_argument(
        "--store-retry-seconds",
        type=non_negative_float,
        default=os.environ.get(RETRY_SECONDS_ENV, str(DEFAULT_RETRY_SECONDS)),
        help="how long checkpoint uploads and downloads (and a worker's calls to the "
        "controller) retry through an outage "
        f"(default ${RETRY_SECONDS_ENV}, else {DEFAULT_RETRY_SECONDS:g}; 0: no retries)",
    )
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
        default=DEFAULT_MODEL,
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
    compile where it pays (CUDA), see ``engine/compile.py``."""
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model (default: on CUDA when a C compiler is there for "
        "Triton, else eager with a warning; off on CPU)",
    )


def train_config(args: argparse.Namespace) -> Any:
    from trainer_image.engine.config import TrainConfig

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


def open_trainer_store(args: argparse.Namespace, interrupt: Any = None) -> Any:
    """``--store`` wrapped so every call rides out outages up to ``--store-retry-seconds``
    (``interrupt``: an event that cuts the waiting short, e.g. SIGTERM's)."""
    from controller_service.contract.store import open_store
    from trainer_image.jobs.store_retry import RetryingStore

    return RetryingStore(open_store(args.store), args.store_retry_seconds, interrupt)

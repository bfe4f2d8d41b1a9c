"""``adaseg pq``: PQ of predictions stored as files, a drop-in for panopticapi's ``pq_compute``
(``eval/pq_files.py``); prints its table, or the dict it returns with ``--json``."""

from __future__ import annotations

import argparse
import json
import sys

from trainer_image.cli.base import ExitCode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt-json", required=True, help="ground truth panoptic JSON")
    parser.add_argument(
        "--gt-folder", help="ground truth PNG folder (default: the JSON path without .json)"
    )
    parser.add_argument("--pred-json", required=True, help="predictions panoptic JSON")
    parser.add_argument(
        "--pred-folder", help="prediction PNG folder (default: the JSON path without .json)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the dict pq_compute returns, as JSON"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")


def main(args: argparse.Namespace) -> int:
    from trainer_image.data.panoptic_png import PanopticPngError
    from trainer_image.eval.pq import PQInputError, format_table
    from trainer_image.eval.pq_files import pq_compute_files

    try:
        result = pq_compute_files(
            args.gt_json, args.gt_folder, args.pred_json, args.pred_folder, args.workers
        )
    except (PQInputError, PanopticPngError) as exc:
        print(f"adaseg pq: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return ExitCode.OK

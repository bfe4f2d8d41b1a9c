"""``adaseg fuse``: two trained models and their AntVisionPS two-level fusion, side by side.

Loads two checkpoints from a store (by key or URI; any two models whose families
have a fusion adapter, e.g. a Panoptic-DeepLab and a mask transformer trained on
the same categories), measures each model's class-wise PQ on a held-out
*selection* split, picks per thing class the better model's instances, and then
evaluates the first model, the second and the fusion on the *report* images and
prints the three PQs. The fusion logic is ``trainer_image.models.fusion``.

Selection and report images never overlap: with ``--select-split`` equal to
``--split`` (the default), ``--select-images`` of that split (default half, drawn
with ``--seed`` like a proxy split) choose the sources and the rest are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from trainer_image.cli.base import ExitCode

__all__ = ["add_arguments", "compare", "main"]


def _batches(split: Any, batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(record indices, normalised images) of consecutive records of one size."""
    from trainer_image.data.loader import normalize_image

    def load(indices: list[int]) -> torch.Tensor:
        return torch.stack([normalize_image(split.load_image(split.records[i])) for i in indices])

    indices: list[int] = []
    size = None
    for index, record in enumerate(split.records):
        this = (record.height, record.width)
        if indices and (this != size or len(indices) == batch_size):
            yield indices, load(indices)
            indices = []
        size = this
        indices.append(index)
    if indices:
        yield indices, load(indices)


def _add(evaluator: Any, cache: Any, split: Any, index: int, prediction: Any) -> None:
    gt_ids, gt_segments = cache.get(index)
    evaluator.add(
        prediction.ids, prediction.segments, gt_ids, gt_segments,
        image_id=split.records[index].image_id,
    )  # fmt: skip


def class_pqs(models: Sequence[Any], split: Any, batch_size: int) -> list[dict[int, float]]:
    """Each model's PQ per category id (0..1) on ``split``."""
    from trainer_image.eval.evaluate import GroundTruthCache
    from trainer_image.eval.pq import PQEvaluator
    from trainer_image.models.fusion import ADAPTERS, class_pq

    cache = GroundTruthCache(split)
    evaluators = [PQEvaluator(split.categories) for _ in models]
    for indices, images in _batches(split, batch_size):
        for model, evaluator in zip(models, evaluators, strict=True):
            predictions, _ = ADAPTERS[model.model_name](model, images)
            for index, prediction in zip(indices, predictions, strict=True):
                _add(evaluator, cache, split, index, prediction)
    return [class_pq(evaluator.result()) for evaluator in evaluators]


def compare(
    first: Any,
    second: Any,
    select_split: Any,
    report_split: Any,
    batch_size: int = 16,
    settings: Any = None,
) -> dict[str, Any]:
    """Sources chosen on ``select_split``, then PQ of both models and of their fusion on
    ``report_split``: ``{"first", "second", "fusion": {pq, pq_th, pq_st, sq, rq},
    "sources": {category name: model name}, "select_pq": ...}``."""
    from trainer_image.eval.evaluate import GroundTruthCache, summarize
    from trainer_image.eval.pq import PQEvaluator
    from trainer_image.models.fusion import ADAPTERS, FusionSettings, choose_sources, fuse

    settings = settings or FusionSettings()
    categories = first.categories
    thing_ids = [c["id"] for c in categories if c["isthing"]]
    first_pq, second_pq = class_pqs([first, second], select_split, batch_size)
    sources = choose_sources(first_pq, second_pq, thing_ids)
    source_of_class = torch.tensor([sources.get(c["id"], 0) for c in categories])

    cache = GroundTruthCache(report_split)
    evaluators = {k: PQEvaluator(report_split.categories) for k in ("first", "second", "fusion")}
    for indices, images in _batches(report_split, batch_size):
        first_predictions, first_views = ADAPTERS[first.model_name](first, images)
        second_predictions, second_views = ADAPTERS[second.model_name](second, images)
        for k, index in enumerate(indices):
            fused = fuse(
                first_views[k], second_views[k], source_of_class, first.thing_classes,
                first.category_ids, settings,
            )  # fmt: skip
            _add(evaluators["first"], cache, report_split, index, first_predictions[k])
            _add(evaluators["second"], cache, report_split, index, second_predictions[k])
            _add(evaluators["fusion"], cache, report_split, index, fused)
    names = {c["id"]: c["name"] for c in categories}
    models = (f"{first.model_name} (first)", f"{second.model_name} (second)")
    return {
        **{key: summarize(evaluator.result()) for key, evaluator in evaluators.items()},
        "sources": {names[cat]: models[which] for cat, which in sources.items()},
        "select_pq": {
            names[cat]: {
                models[0]: 100 * first_pq.get(cat, 0.0),
                models[1]: 100 * second_pq.get(cat, 0.0),
            }
            for cat in thing_ids
        },
        "report_images": len(report_split),
        "select_images": len(select_split),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="file:///abs/dir or s3://bucket/prefix")
    parser.add_argument("--first", required=True, help="checkpoint key or URI in --store")
    parser.add_argument("--second", required=True, help="checkpoint key or URI in --store")
    parser.add_argument("--data", type=Path, required=True, help="dataset root")
    parser.add_argument("--split", default="val", help="split the PQs are reported on")
    parser.add_argument(
        "--select-split",
        default=None,
        help="held-out split the per-class choice is measured on (default: part of --split)",
    )
    parser.add_argument(
        "--select-images",
        default="0.5",
        help="with --select-split equal to --split: the held-out part, a fraction or a count",
    )
    parser.add_argument("--seed", type=int, default=0, help="which images are held out")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto")
    parser.add_argument("--overlap-threshold", type=float, default=0.5)
    parser.add_argument("--stuff-area", type=int, default=4096, help="at 640 px, scaled")
    parser.add_argument("--instance-score-threshold", type=float, default=0.0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _fail(message: object) -> int:
    print(f"adaseg fuse: error: {message}", file=sys.stderr)
    return ExitCode.USAGE


def format_result(result: dict[str, Any], first: str, second: str) -> str:
    """The three rows and the per-class choice, as the command prints them."""
    rows = [
        (f"{first} (first)", result["first"]),
        (f"{second} (second)", result["second"]),
        ("two-level fusion", result["fusion"]),
    ]
    lines = [
        f"PQ on {result['report_images']} images (%); thing sources chosen on "
        f"{result['select_images']} held-out images:",
        f"{'model':34} {'PQ':>6} {'PQ_th':>6} {'PQ_st':>6} {'SQ':>6} {'RQ':>6}",
    ]
    for name, s in rows:
        lines.append(
            f"{name:34} {s['pq']:6.2f} {s['pq_th']:6.2f} {s['pq_st']:6.2f} "
            f"{s['sq']:6.2f} {s['rq']:6.2f}"
        )
    lines.append("things from: " + ", ".join(f"{k} → {v}" for k, v in result["sources"].items()))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from controller_service.contract.store import StoreError, open_store
    from trainer_image.data.coco_panoptic import DatasetError
    from trainer_image.data.split import parse_proxy_val, proxy_split
    from trainer_image.engine.checkpoint import CheckpointError, load_checkpoint
    from trainer_image.jobs.session import (
        SetupError,
        model_from_checkpoint,
        open_split,
        resolve_device,
    )
    from trainer_image.models.fusion import ADAPTERS, FusionSettings
    from trainer_image.models.registry import category_dicts

    if args.batch_size < 1:
        return _fail(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        device = resolve_device(args.device)
        store = open_store(args.store)
        models = []
        for flag, key in (("--first", args.first), ("--second", args.second)):
            checkpoint = load_checkpoint(store, key)
            if checkpoint.model_name not in ADAPTERS:
                return _fail(
                    f"{flag} holds a {checkpoint.model_name!r} model; fusion knows "
                    f"{sorted(ADAPTERS)}"
                )
            models.append(model_from_checkpoint(checkpoint).to(device).eval())
        first, second = models
        if first.categories != second.categories:
            return _fail("the two models were trained on different categories")
        report = open_split(args.data, args.split)
        select_name = args.select_split or args.split
        if select_name == args.split:
            report, select = proxy_split(report, parse_proxy_val(args.select_images), args.seed)
        else:
            select = open_split(args.data, select_name)
        data_ids = [c["id"] for c in category_dicts(report.categories)]
        if [c["id"] for c in first.categories] != data_ids:
            return _fail(f"the models' categories are not those of --data {args.data}")
        settings = FusionSettings(
            instance_score_threshold=args.instance_score_threshold,
            overlap_threshold=args.overlap_threshold,
            stuff_area=args.stuff_area,
        )
        with torch.no_grad():
            result = compare(first, second, select, report, args.batch_size, settings)
    except (CheckpointError, StoreError, SetupError, DatasetError, ValueError) as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        print(format_result(result, first.model_name, second.model_name))
    return 0

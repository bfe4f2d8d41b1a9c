"""``adaseg data``: synthesize COCO-panoptic data, make proxy splits, check a dataset.

    adaseg data synth --out DIR --images N --size S|HxW --seed K [--val-images V]
    adaseg data split --data DIR --split train --proxy-val 0.1 --seed 0 [--out FILE]
    adaseg data check --data DIR --split val

``split`` prints the sizes of proxy-train and proxy-val; with ``--out`` it
also writes them as JSON (``proxy_train_ids``, ``proxy_val_ids``, ``proxy_val``,
``seed``). The trainers call ``proxy_split`` themselves with the same
arguments, so this command is for looking, not a step they need. ``split`` and ``check`` take
either ``--data DIR --split NAME`` (any layout ``PanopticSplit.from_dir`` knows:
ours, COCO 2017, detectron2's COCO and ADE20K) or the explicit
``--json --png-dir --image-dir [--categories-json]`` paths.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainer_image.cli.base import ExitCode
from trainer_image.data.coco_panoptic import DatasetError, PanopticSplit


def _add_split_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, help="dataset root (ours, COCO 2017, detectron2 COCO or ADE20K layout)"
    )
    parser.add_argument("--split", default="train", help="split under --data (train, val, ...)")
    parser.add_argument("--json", type=Path, help="panoptic JSON (instead of --data)")
    parser.add_argument("--png-dir", type=Path, help="panoptic PNG folder (with --json)")
    parser.add_argument("--image-dir", type=Path, help="image folder (with --json)")
    parser.add_argument("--categories-json", type=Path, help="categories, if not in --json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)

    synth = sub.add_parser("synth", help="write a synthetic dataset (splits train and val)")
    synth.add_argument("--out", type=Path, required=True, help="output dataset root")
    synth.add_argument("--images", type=int, required=True, help="training images")
    synth.add_argument("--size", default="64", help="S for SxS or HxW, e.g. 480x640")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--val-images", type=int, help="validation images (default images/4)")

    split = sub.add_parser("split", help="the proxy-train / proxy-val split of a split")
    _add_split_source(split)
    split.add_argument(
        "--proxy-val", required=True, help="a fraction in (0, 1) such as 0.1, or an image count"
    )
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--out", type=Path, help="write the two lists of image ids as JSON")

    check = sub.add_parser("check", help="open a split and decode every image and PNG")
    _add_split_source(check)


def open_split(args: argparse.Namespace) -> PanopticSplit:
    if args.json is not None:
        if args.png_dir is None or args.image_dir is None:
            raise ValueError("--json needs --png-dir and --image-dir")
        return PanopticSplit.from_files(
            args.json, args.png_dir, args.image_dir, args.categories_json
        )
    if args.data is None:
        raise ValueError("give --data DIR [--split NAME] or --json/--png-dir/--image-dir")
    return PanopticSplit.from_dir(args.data, args.split)


def _synth(args: argparse.Namespace) -> int:
    from trainer_image.data.synth import parse_size, synthesize

    size = parse_size(args.size)
    synthesize(args.out, args.images, size, args.seed, val_images=args.val_images)
    val = max(1, args.images // 4) if args.val_images is None else args.val_images
    print(f"wrote {args.images} train + {val} val images of {size[0]}x{size[1]} to {args.out}")
    return ExitCode.OK


def _split(args: argparse.Namespace) -> int:
    from trainer_image.data.split import parse_proxy_val, proxy_split

    split = open_split(args)
    proxy_val = parse_proxy_val(args.proxy_val)
    train, val = proxy_split(split, proxy_val, seed=args.seed)
    print(f"proxy-train: {len(train)} images, proxy-val: {len(val)} images (seed {args.seed})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "proxy_val": proxy_val,
                    "seed": args.seed,
                    "proxy_train_ids": [r.image_id for r in train.records],
                    "proxy_val_ids": [r.image_id for r in val.records],
                }
            )
        )
        print(f"wrote {args.out}")
    return ExitCode.OK


def _check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    split = open_split(args)
    for record in tqdm(split.records, desc="check", unit="img", disable=len(split) < 100):
        split.load_image(record)
        split.load_panoptic(record)
    crowd = sum(s.iscrowd for r in split.records for s in r.segments)
    segments = sum(len(r.segments) for r in split.records)
    print(
        f"ok: {len(split)} images, {segments} segments ({crowd} crowd), "
        f"{len(split.categories)} categories ({len(split.thing_ids)} things)"
    )
    return ExitCode.OK


def main(args: argparse.Namespace) -> int:
    action = {"synth": _synth, "split": _split, "check": _check}[args.action]
    try:
        return action(args)
    except (DatasetError, ValueError) as exc:  # DatasetError names the file
        print(f"adaseg data {args.action}: {exc}", file=sys.stderr)
        return ExitCode.ERROR

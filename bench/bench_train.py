"""Training throughput of both model families (pure PyTorch), measured in one run.

Panoptic-DeepLab (the default model, three losses) and the mask transformer
(ten losses at its default depth: Hungarian matching per prediction set, mask
losses at full resolution). One training step is forward (every loss) +
backward of their equal-weight sum + one SGD step (momentum 0.9, weight decay
1e-4), on batches of synthetic images with their real targets, already in
memory: the data loader is timed on its own line, so either cost can be
compared with the other. Inference
(``model.predict``: eval forward + batched post-processing) is timed too, since
it runs on the proxy-validation split every round.

Sizes:

* ``tiny`` / ``mask-tiny`` at the demo's size (64×64 synthetic images, batch 16);
  ``mask-remax`` is ``mask-tiny`` with ReMask and ReClass on;
* ``gpu`` / ``mask-gpu`` (the GPU presets) at 512×512, batch 2 — measured on
  whatever device runs this (``--device``), so on a CPU-only machine it is a CPU
  figure.

When both rows of a pair run, the mask transformer's training rate is printed as
a ratio of the default model's (and ReMaX's as one of the plain mask
transformer's), measured in the same run.

    .venv/bin/python bench/bench_train.py --only tiny --only mask-tiny --only mask-remax \
        --threads 1
    .venv/bin/python bench/bench_train.py --only gpu --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainer_image.data.coco_panoptic import PanopticSplit
from trainer_image.data.loader import make_loader
from trainer_image.data.synth import synthesize
from trainer_image.models import build_model

ROWS = {
    # name: (model, preset, image size, batch size, share of --steps timed)
    "tiny": ("panoptic_deeplab", "tiny", 64, 16, 1.0),
    "gpu": ("panoptic_deeplab", "gpu", 512, 2, 0.1),
    "mask-tiny": ("mask_transformer", "tiny", 64, 16, 1.0),
    "mask-remax": ("mask_transformer", "tiny", 64, 16, 1.0),
    "mask-gpu": ("mask_transformer", "gpu", 512, 2, 0.1),
}
# model config beyond the preset
OVERRIDES = {"mask-remax": {"remask": True, "reclass": True}}
# row → the row it is compared with (same run, same thread count)
PAIRS = {"mask-tiny": "tiny", "mask-remax": "mask-tiny", "mask-gpu": "gpu"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _significant(value: float, digits: int = 3) -> float:
    """Rounded to ``digits`` significant digits: 0.143 and 136 alike."""
    return float(f"{value:.{digits}g}")


def _median_seconds(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_row(
    name: str, data_root: Path, steps: int, warmup: int, device: torch.device
) -> dict[str, float | int | str]:
    model_name, preset, size, batch_size, share = ROWS[name]
    steps, warmup = max(3, round(steps * share)), max(1, round(warmup * share))
    root = data_root / f"{name}-{size}"
    if not (root / "annotations" / "panoptic_train.json").is_file():
        synthesize(root, max(2 * batch_size, 8), size, seed=0, val_images=1, progress=False)
    split = PanopticSplit.from_dir(root, "train")
    torch.manual_seed(0)
    model = build_model(model_name, split.categories, preset=preset, **OVERRIDES.get(name, {})).to(
        device
    )
    params = sum(p.numel() for p in model.parameters())

    loader = make_loader(split, batch_size, train=True, target_builder=model.target_builder())
    start = time.perf_counter()
    batches = [b for b in loader]
    loader_ips = len(batches) * batch_size / (time.perf_counter() - start)
    tensors = [
        {k: v.to(device) for k, v in b.items() if isinstance(v, torch.Tensor)} for b in batches
    ]
    cycle = itertools.cycle(tensors)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)

    def train_step() -> None:
        losses = model(next(cycle))
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    model.train()
    for _ in range(warmup):
        train_step()
    step_s = _median_seconds(train_step, steps, device)

    images = tensors[0]["image"]

    def predict() -> None:
        model.predict(images)

    for _ in range(max(1, warmup // 2)):
        predict()
    predict_s = _median_seconds(predict, max(3, steps // 2), device)
    return {
        "row": name,
        "model": model_name,
        "losses": len(model.loss_names),
        "preset": preset,
        "params_M": round(params / 1e6, 2),
        "image_size": size,
        "batch": batch_size,
        "step_ms": round(step_s * 1e3, 1),
        "train_it_per_s": _significant(1 / step_s),
        "train_img_per_s": _significant(batch_size / step_s),
        "predict_img_per_s": _significant(batch_size / predict_s),
        "loader_img_per_s": _significant(loader_ips),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(ROWS), action="append")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--threads",
        default=str(torch.get_num_threads()),
        help="torch intra-op thread counts to compare, comma-separated (e.g. 1,2)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", type=Path, default=None, help="synthetic data cache dir")
    parser.add_argument("--json", action="store_true", help="print rows as JSON")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    device = torch.device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device {device}, torch {torch.__version__}, {os.cpu_count()} cores, "
        f"load average {load:.2f} at start"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_root = args.data or Path(tmp)
        for name in args.only or list(ROWS):
            for threads in thread_counts:
                torch.set_num_threads(threads)
                row = bench_row(name, data_root, args.steps, args.warmup, device)
                rows.append({"threads": threads, **row})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    header = (
        f"{'row':10} {'thr':>3} {'losses':>6} {'params':>7} {'size':>5} {'batch':>5} "
        f"{'step ms':>8} {'it/s':>6} {'train img/s':>11} {'predict img/s':>13} "
        f"{'loader img/s':>12}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['row']:10} {r['threads']:>3} {r['losses']:>6} {r['params_M']:>6}M "
            f"{r['image_size']:>5} {r['batch']:>5} {r['step_ms']:>8} {r['train_it_per_s']:>6} "
            f"{r['train_img_per_s']:>11} {r['predict_img_per_s']:>13} {r['loader_img_per_s']:>12}"
        )
    first = {}
    for r in rows:
        first.setdefault(r["row"], r)
        base = first[r["row"]]
        if r is not base:
            print(
                f"{r['row']}: {r['threads']} threads train "
                f"{r['train_img_per_s'] / base['train_img_per_s']:.2f}x the rate of "
                f"{base['threads']} thread(s)"
            )
    for row, base_row in PAIRS.items():
        same = [
            (r, b)
            for r in rows
            if r["row"] == row
            for b in rows
            if b["row"] == base_row and b["threads"] == r["threads"]
        ]
        for r, b in same:
            print(
                f"{row} ({r['threads']} thr) trains at "
                f"{r['train_img_per_s'] / b['train_img_per_s']:.2f}x the images/s of {base_row}; "
                f"predict at {r['predict_img_per_s'] / b['predict_img_per_s']:.2f}x"
            )
    if {"tiny", "gpu"} <= first.keys() and first["tiny"]["threads"] == first["gpu"]["threads"]:
        ratio = first["tiny"]["train_img_per_s"] / first["gpu"]["train_img_per_s"]
        pixels = (ROWS["gpu"][2] / ROWS["tiny"][2]) ** 2
        print(
            f"tiny@{ROWS['tiny'][2]} trains {ratio:.0f}x more images/s than "
            f"gpu@{ROWS['gpu'][2]} ({ratio / pixels:.1f}x per pixel) on this device"
        )
    for r in rows:
        print(
            f"{r['row']} ({r['threads']} thr): predict (incl. post-processing) runs at "
            f"{r['predict_img_per_s'] / r['train_img_per_s']:.1f}x the training rate"
        )


if __name__ == "__main__":
    main()

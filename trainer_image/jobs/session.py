"""What every trainer process sets up the same way: device, seeds, splits, loaders, models.

The worker, the transfer trainer and the static-baseline trainer differ in
where their loss weights come from, not in how they read data or rebuild a
model; this module is that common part, so the three cannot drift apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from trainer_image.data.coco_panoptic import LayoutNotFound, PanopticSplit
from trainer_image.data.loader import make_loader, train_batching
from trainer_image.data.split import proxy_split
from trainer_image.engine.checkpoint import Checkpoint
from trainer_image.models import build_model


class SetupError(ValueError):
    """A trainer cannot start: bad data directory, device or model settings."""


@dataclass
class DataOptions:
    """Where the data is and how it is batched; shared by every trainer command."""

    root: Path
    split: str = "train"
    proxy_val: float | int = 0.1
    batch_size: int = 4
    workers: int = 0
    crop_size: int | None = None
    seed: int | None = None


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts: stable across processes and Python runs (unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when there is one; ``cuda`` without one is an error, not a slow run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"device {name!r} requested but no CUDA GPU is available")
    return device


def open_split(root: Path, split: str) -> PanopticSplit:
    """The split under ``root`` in any layout ``PanopticSplit.from_dir`` knows; a missing
    directory or an unknown layout is a ``SetupError`` (a wrong ``--data``/``--split``)."""
    root = Path(root)
    if not root.is_dir():
        raise SetupError(f"data directory {root} does not exist")
    try:
        return PanopticSplit.from_dir(root, split)
    except LayoutNotFound as exc:
        raise SetupError(f"--data {root} --split {split}: {exc}") from None


def check_batching(split: PanopticSplit, options: DataOptions) -> None:
    """Fail with the flags to change when ``split`` cannot be batched as ``options`` say
    (real COCO and ADE20K have many image sizes), before any training work is taken on."""
    try:
        train_batching(split, options.batch_size, options.crop_size)
    except ValueError as exc:
        raise SetupError(
            f"--data {options.root} --split {options.split}: {exc}; change --batch-size or "
            "--crop-size"
        ) from None


def load_proxy_splits(options: DataOptions, seed: int) -> tuple[PanopticSplit, PanopticSplit]:
    """(proxy_train, proxy_val) of the training split: every worker of a run gets the same.
    Checks that proxy-train can be batched (``check_batching``)."""
    split = open_split(options.root, options.split)
    try:
        proxy_train, proxy_val = proxy_split(split, options.proxy_val, seed)
    except ValueError as exc:
        raise SetupError(f"--proxy-val {options.proxy_val}: {exc}") from None
    check_batching(proxy_train, options)
    return proxy_train, proxy_val


class RankSlice(Sampler):
    """Rank ``rank``'s share of every *global* batch of a sampler, for data parallelism.

    The wrapped sampler orders the whole split; it is cut into global batches of
    ``global_batch`` keys (incomplete last one dropped) and each rank takes its
    contiguous slice of each. So the images of an iteration are the same on one
    process with batch B as on W processes with B/W each (torch's
    DistributedSampler interleaves instead, which changes every batch).
    """

    def __init__(self, sampler: Sampler, rank: int, world: int, global_batch: int) -> None:
        if global_batch % world:
            raise SetupError(f"batch size {global_batch} is not divisible by {world} processes")
        self.sampler, self.rank, self.world = sampler, rank, world
        self.global_batch = global_batch
        self.local_batch = global_batch // world

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.global_batch * self.local_batch

    def __iter__(self) -> Iterator[Any]:
        keys = list(self.sampler)
        start = self.rank * self.local_batch
        for offset in range(0, len(keys) - self.global_batch + 1, self.global_batch):
            yield from keys[offset + start : offset + start + self.local_batch]


def train_loader(
    split: PanopticSplit,
    model: Any,
    options: DataOptions,
    seed: int,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """The training loader; with ``world`` > 1 each rank gets its slice of every global batch
    (``options.batch_size`` is the global batch size)."""
    check_batching(split, options)
    loader = make_loader(
        split,
        options.batch_size,
        train=True,
        target_builder=model.target_builder(),
        workers=options.workers,
        crop_size=options.crop_size,
        seed=seed,
    )
    if world == 1:
        return loader
    sampler = RankSlice(loader.sampler, rank, world, options.batch_size)
    return DataLoader(
        loader.dataset,
        batch_size=sampler.local_batch,
        sampler=sampler,
        num_workers=options.workers,
        collate_fn=loader.collate_fn,
        drop_last=True,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=options.workers > 0,
    )


def fresh_model(
    name: str, categories: Any, config: Mapping[str, Any] | None, seed: int
) -> torch.nn.Module:
    """A new model whose initial weights depend only on ``seed`` (every process agrees)."""
    torch.manual_seed(seed)
    try:
        return build_model(name, categories, **dict(config or {}))
    except (TypeError, ValueError) as exc:
        raise SetupError(f"cannot build model {name!r}: {exc}") from None


def model_from_checkpoint(checkpoint: Checkpoint) -> torch.nn.Module:
    """Rebuild the model a checkpoint was saved from and load its weights."""
    config = dict(checkpoint.model_config)
    categories = config.pop("categories")
    model = build_model(checkpoint.model_name, categories, **config)
    model.load_state_dict(checkpoint.model_state)
    return model

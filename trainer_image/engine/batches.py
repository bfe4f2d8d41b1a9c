"""Batches for the loop: an endless, numbered stream over a loader, moved to the device."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to the device."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def batch_images(batch: Any) -> int:
    """Number of images in a batch: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(values, Iterable) and not isinstance(values, (str, bytes)):
        for value in values:
            count = batch_images(value)
            if count:
                return count
    return 0


def forever(loader: Iterable[Any], first_pass: int = 0) -> Iterator[Any]:
    """Iterate a loader again and again; passes are numbered for samplers that reshuffle."""
    pass_ = first_pass
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(pass_)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the data loader yields no batches")
        pass_ += 1


def interval_batches(loader: Any, interval: int, iterations: int) -> Iterator[Any]:
    """The batches of interval ``interval`` (0-based): passes over the loader are numbered so
    that no two intervals share one, even when an interval is longer than a pass."""
    passes_per_interval = max(1, math.ceil(iterations / len(loader)))
    return forever(loader, first_pass=interval * passes_per_interval)

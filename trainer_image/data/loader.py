"""The panoptic Dataset and a batched, seeded DataLoader over a ``PanopticSplit``.

Determinism: the sampler yields ``(index, epoch)`` keys and each sample draws
its augmentation from a generator seeded by ``(seed, epoch, index)``, so a
batch is the same whatever the number of workers and whichever worker builds
it, and every epoch gets a fresh shuffle and fresh augmentation.

Batches are stacked, never padded: training crops every sample to one size
(``crop_size``, or the common size of the split's images when they share one,
as the synthetic data does); evaluation with ``batch_size > 1`` needs images
of one size (the synthetic data is; for COCO use ``batch_size=1``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer_image.data.coco_panoptic import DatasetError, PanopticSplit, Segment, segment_stats
from trainer_image.data.transforms import EvalTransform, TrainTransform

# ImageNet statistics: what pretrained backbones expect, harmless from scratch
IMAGE_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGE_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# the RGB pixel that normalises to zero: padding colour of crops
MEAN_PIXEL: tuple[int, ...] = tuple(round(255 * m) for m in IMAGE_MEAN)

TargetBuilder = Callable[[np.ndarray, Sequence[Segment], PanopticSplit], Mapping[str, np.ndarray]]
"""``target_builder(ids (H, W) int32, segments, split) -> {name: array}``."""

Transform = Callable[..., tuple[np.ndarray, np.ndarray]]

_MEAN = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGE_STD).view(3, 1, 1)


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, H, W) float32: [0, 1], then ImageNet mean/std."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    return tensor.sub_(_MEAN).div_(_STD)


def _to_tensor(value: np.ndarray) -> torch.Tensor:
    """A numpy array as a tensor of its dtype and shape (0-d stays 0-d;
    flipped, negative-stride views are copied, which torch requires)."""
    value = np.asarray(value)
    return torch.from_numpy(value if value.flags.c_contiguous else value.copy())


def present_segments(
    ids: np.ndarray, segments: Sequence[Segment], where: str = "panoptic map"
) -> tuple[Segment, ...]:
    """The segments still present in (augmented) ``ids``, with area and bbox
    recomputed from ``ids``; an id without a segment is a ``DatasetError``."""
    seg_ids, areas, bboxes = segment_stats(ids)
    by_id = {s.id: s for s in segments}
    unknown = [i for i in seg_ids.tolist() if i not in by_id]
    if unknown:
        raise DatasetError(f"{where}: segment ids {unknown[:10]} are not in segments_info")
    return tuple(
        Segment(sid, by_id[sid].category_id, area, by_id[sid].iscrowd, tuple(bbox))
        for sid, area, bbox in zip(seg_ids.tolist(), areas.tolist(), bboxes.tolist(), strict=True)
    )


class PanopticDataset(Dataset):
    """Samples of a split: ``dict(image, panoptic, image_id, **targets)``.

    ``image`` is a normalised float32 (3, H, W) tensor, ``panoptic`` the
    augmented segment ids as an int64 (H, W) tensor (int64: what torch's
    indexing and ``one_hot`` take). ``target_builder`` gets the augmented ids
    and the segments still present in them (area and bbox recomputed), and its
    arrays become tensors of the same dtype. A key is an index or an
    ``(index, epoch)`` pair from ``SeededSampler``.
    """

    def __init__(
        self,
        split: PanopticSplit,
        transform: Transform | None = None,
        target_builder: TargetBuilder | None = None,
        seed: int = 0,
    ) -> None:
        self.split = split
        self.transform = transform if transform is not None else EvalTransform()
        self.target_builder = target_builder
        self.seed = seed

    def __len__(self) -> int:
        return len(self.split.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.split.records[index]
        image = self.split.load_image(record)
        # ids are checked against segments_info after augmentation, in one pass
        ids = self.split.load_panoptic(record, check=False)
        rng = np.random.default_rng([self.seed, epoch, index])
        image, ids = self.transform(image, ids, rng)
        segments = present_segments(ids, record.segments, str(self.split.png_path(record)))
        sample: dict[str, Any] = {
            "image": normalize_image(image),
            "panoptic": torch.from_numpy(ids.astype(np.int64)),
            "image_id": record.image_id,
        }
        if self.target_builder is not None:
            targets = self.target_builder(ids, segments, self.split)
            for name, value in targets.items():
                if name in sample:
                    raise ValueError(f"target_builder output {name!r} clashes with a sample key")
                sample[name] = _to_tensor(value)
        return sample


class SeededSampler(Sampler):
    """Yields ``(index, epoch)`` keys: shuffled per epoch by ``(seed, epoch)``
    when ``shuffle``, in order otherwise. Each ``iter()`` is a new epoch;
    ``set_epoch`` sets the next one (to resume)."""

    def __init__(self, size: int, shuffle: bool, seed: int = 0) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        else:
            order = np.arange(self.size)
        return iter([(int(i), epoch) for i in order])


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape, keep everything else (image ids) as lists."""
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f"cannot batch {name!r} of different sizes {sorted(shapes)}: use "
                    "batch_size=1 or a crop_size"
                )
            batch[name] = torch.stack(values)
        else:
            batch[name] = values
    return batch


def _single_thread_worker(_: int) -> None:
    # workers share few cores with the training process: no intra-op threads
    torch.set_num_threads(1)


def train_batching(
    split: PanopticSplit,
    batch_size: int,
    crop_size: int | tuple[int, int] | None,
    drop_last: bool = True,
) -> int | tuple[int, int] | None:
    """The training crop for ``split`` batched by ``batch_size``: ``crop_size``, else the
    images' common size, else ``None`` (one image per batch needs no crop).

    Raises ``ValueError`` when no batch can be made: differently sized images that cannot
    be stacked (real COCO and ADE20K always have them), or fewer images than one batch
    with ``drop_last``. Callers check it before they commit to work (a worker before it
    takes a lease), not only when the loader is built.
    """
    if not split.records:
        raise ValueError("cannot load an empty split")
    if crop_size is None:
        sizes = {(r.height, r.width) for r in split.records}
        if len(sizes) == 1:
            crop_size = sizes.pop()
        elif batch_size > 1:
            (h1, w1), (h2, w2) = sorted(sizes)[:2]
            raise ValueError(
                f"images differ in size ({len(sizes)} sizes, e.g. {w1}x{h1} and {w2}x{h2}): "
                f"training with batch_size {batch_size} > 1 needs a crop_size"
            )
    if drop_last and len(split) < batch_size:
        raise ValueError(
            f"batch_size {batch_size} exceeds the split's {len(split)} images with "
            "drop_last: no batch would be produced"
        )
    return crop_size


def make_loader(
    split: PanopticSplit,
    batch_size: int,
    train: bool,
    target_builder: TargetBuilder | None = None,
    workers: int = 0,
    crop_size: int | tuple[int, int] | None = None,
    seed: int = 0,
    drop_last: bool | None = None,
    scale_range: tuple[float, float] = (0.75, 1.25),
    flip: bool = True,
) -> DataLoader:
    """A batched loader over ``split``.

    Training shuffles, augments (scale, crop, flip) and drops the last
    incomplete batch by default; ``crop_size`` defaults to the images' size
    when they all share one. Evaluation keeps order and images unchanged (no
    ``crop_size``). Deterministic in ``seed`` whatever ``workers`` is.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not split.records:
        raise ValueError("cannot load an empty split")
    if train:
        drop_last = True if drop_last is None else drop_last
        crop_size = train_batching(split, batch_size, crop_size, drop_last)
        transform: Transform = TrainTransform(
            scale_range, crop_size, flip, seed=seed, fill=MEAN_PIXEL
        )
    else:
        if crop_size is not None:
            raise ValueError("evaluation does not crop: PQ is computed at full resolution")
        transform = EvalTransform()
        drop_last = bool(drop_last)
    dataset = PanopticDataset(split, transform, target_builder, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=SeededSampler(len(dataset), shuffle=train, seed=seed),
        num_workers=workers,
        collate_fn=collate_samples,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_single_thread_worker if workers > 0 else None,
        persistent_workers=workers > 0,
    )

"""The Dataset and DataLoader: batches, targets, workers, determinism, errors."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer_image.data.coco_panoptic import VOID_LABEL, DatasetError, PanopticSplit, Segment
from trainer_image.data.loader import (
    IMAGE_MEAN,
    IMAGE_STD,
    PanopticDataset,
    make_loader,
    present_segments,
)


def semantic_targets(
    ids: np.ndarray, segments: Sequence[Segment], split: PanopticSplit
) -> dict[str, np.ndarray]:
    """A minimal target builder: the semantic map (class index, 255 for void)
    and the number of segments it was given."""
    semantic = np.full(ids.shape, VOID_LABEL, dtype=np.int64)
    for segment in segments:
        semantic[ids == segment.id] = split.category_index[segment.category_id]
    return {"semantic": semantic, "n_segments": np.array(len(segments), dtype=np.int32)}


def test_train_batches_with_two_workers(synth_train: PanopticSplit) -> None:
    loader = make_loader(
        synth_train, 4, train=True, target_builder=semantic_targets, workers=2, crop_size=48
    )
    batches = list(loader)
    assert len(batches) == 6  # 24 images, drop_last
    ids = [i for b in batches for i in b["image_id"]]
    assert sorted(ids) == list(range(1, 25)) and ids != sorted(ids)  # all, shuffled
    batch = batches[0]
    assert batch["image"].shape == (4, 3, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["panoptic"].shape == (4, 48, 48) and batch["panoptic"].dtype == torch.int64
    assert batch["semantic"].shape == (4, 48, 48) and batch["semantic"].dtype == torch.int64
    assert batch["n_segments"].shape == (4,)
    # targets were built from the augmented ids the batch carries
    classes = {s.id: synth_train.category_index[s.category_id] for r in synth_train.records
               for s in r.segments}  # fmt: skip
    for panoptic, semantic in zip(batch["panoptic"], batch["semantic"], strict=True):
        for sid in torch.unique(panoptic).tolist():
            expected = VOID_LABEL if sid == 0 else classes[sid]
            assert (semantic[panoptic == sid] == expected).all()


def test_deterministic_whatever_the_workers(synth_train: PanopticSplit) -> None:
    def epoch_batches(workers: int) -> list[dict]:
        loader = make_loader(synth_train, 6, train=True, workers=workers, crop_size=40, seed=3)
        return [list(loader), list(loader)]  # two epochs

    serial, parallel = epoch_batches(0), epoch_batches(2)
    for epoch_a, epoch_b in zip(serial, parallel, strict=True):
        for a, b in zip(epoch_a, epoch_b, strict=True):
            assert a["image_id"] == b["image_id"]
            assert torch.equal(a["panoptic"], b["panoptic"])
            assert torch.equal(a["image"], b["image"])
    # each epoch has its own order and augmentation
    assert serial[0][0]["image_id"] != serial[1][0]["image_id"]


def test_eval_loader_keeps_order_and_pixels(synth_val: PanopticSplit) -> None:
    loader = make_loader(synth_val, 8, train=False)
    (batch,) = list(loader)
    assert batch["image_id"] == [r.image_id for r in synth_val.records]
    assert batch["image"].shape == (8, 3, 64, 64)
    record = synth_val.records[2]
    raw = synth_val.load_image(record)
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    restored = (batch["image"][2] * std + mean) * 255
    assert torch.allclose(restored.permute(1, 2, 0), torch.from_numpy(raw).float(), atol=1e-3)
    assert np.array_equal(batch["panoptic"][2].numpy(), synth_val.load_panoptic(record))


def test_default_crop_is_the_common_image_size(synth_train: PanopticSplit) -> None:
    batch = next(iter(make_loader(synth_train, 2, train=True)))
    assert batch["image"].shape == (2, 3, 64, 64)


def test_different_sizes_need_a_crop(coco_sample: PanopticSplit) -> None:
    with pytest.raises(ValueError, match="needs a crop_size"):
        make_loader(coco_sample, 2, train=True, drop_last=False)
    with pytest.raises(ValueError, match="cannot batch 'image' of different sizes"):
        next(iter(make_loader(coco_sample, 2, train=False)))
    # one training step's worth of real COCO data, cropped
    batch = next(iter(make_loader(coco_sample, 2, train=True, crop_size=128)))
    assert batch["image"].shape == (2, 3, 128, 128)


def test_bad_arguments(synth_train: PanopticSplit) -> None:
    with pytest.raises(ValueError, match="exceeds the split's 24 images"):
        make_loader(synth_train, 32, train=True)
    with pytest.raises(ValueError, match="evaluation does not crop"):
        make_loader(synth_train, 2, train=False, crop_size=32)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(synth_train, 0, train=False)


def test_present_segments_recomputes_after_a_crop() -> None:
    segments = [Segment(7, 1, 100, False, (0, 0, 10, 10)), Segment(9, 2, 5, True, (0, 0, 5, 1))]
    ids = np.array([[7, 7, 0], [7, 0, 0]], dtype=np.int32)
    assert present_segments(ids, segments) == (Segment(7, 1, 3, False, (0, 0, 2, 2)),)
    with pytest.raises(DatasetError, match=r"x.png: segment ids \[8\]"):
        present_segments(np.array([[8]]), segments, "x.png")


def test_a_corrupt_file_in_a_worker_names_the_file(synth_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(synth_dir, root)
    split = PanopticSplit.from_dir(root, "val")
    png = split.png_path(split.records[5])
    png.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=f"{png}: not a readable PNG"):
        list(make_loader(split, 4, train=False, workers=2))
    with pytest.raises(DatasetError, match=f"{png}"):
        PanopticDataset(split)[5]

"""What every trainer opens the same way (trainer_image/jobs/session.py): splits by layout, and
batching and proxy-val settings checked before any work is taken on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.data import LAYOUTS, real_sample_layout
from trainer_image.data.coco_panoptic import PanopticSplit
from trainer_image.jobs.session import (
    DataOptions,
    SetupError,
    check_batching,
    load_proxy_splits,
    open_split,
)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_open_split_reads_every_real_layout(
    coco_sample_dir: Path, tmp_path: Path, layout: str
) -> None:
    root = real_sample_layout(coco_sample_dir, tmp_path, layout)
    for split in ("train", "val"):
        assert len(open_split(root, split)) == 2
    train, val = load_proxy_splits(DataOptions(root, batch_size=1, proxy_val=1), seed=0)
    assert (len(train), len(val)) == (1, 1)


def test_open_split_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match=f"data directory {tmp_path / 'nope'} does not exist"):
        open_split(tmp_path / "nope", "train")
    with pytest.raises(SetupError) as err:
        open_split(tmp_path, "train")
    message = str(err.value)
    assert message.startswith(f"--data {tmp_path} --split train: no panoptic split 'train'")
    for path in ("annotations/panoptic_train.json", "panoptic_train2017", "images/training"):
        assert str(tmp_path / path) in message


def test_mixed_image_sizes_need_a_crop_for_batches(coco_sample: PanopticSplit) -> None:
    """The real sample's two images are 640x427 and 640x360, like all of COCO and ADE20K."""
    root = Path("/data/coco")
    with pytest.raises(SetupError) as err:
        check_batching(coco_sample, DataOptions(root, batch_size=2))
    message = str(err.value)
    assert "images differ in size (2 sizes, e.g. 640x360 and 640x427)" in message
    assert "needs a crop_size; change --batch-size or --crop-size" in message
    check_batching(coco_sample, DataOptions(root, batch_size=2, crop_size=64))
    check_batching(coco_sample, DataOptions(root, batch_size=1))
    with pytest.raises(SetupError, match="batch_size 3 exceeds the split's 2 images"):
        check_batching(coco_sample, DataOptions(root, batch_size=3, crop_size=64))


def test_a_proxy_val_the_split_cannot_hold_is_a_setup_error(synth_dir: Path) -> None:
    with pytest.raises(SetupError, match=r"--proxy-val 24: proxy_val as a count must lie in"):
        load_proxy_splits(DataOptions(synth_dir, proxy_val=24), seed=0)

"""The synthetic generator: through the reader, deterministic, and the task it promises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer_image.data.coco_panoptic import PanopticSplit
from trainer_image.data.synth import (
    SYNTH_CATEGORIES,
    VAL_ID_OFFSET,
    parse_size,
    render_image,
    synthesize,
)


def test_round_trip_through_the_reader(synth_dir: Path) -> None:
    for name, count, first_id in (("train", 24, 1), ("val", 8, VAL_ID_OFFSET + 1)):
        split = PanopticSplit.from_dir(synth_dir, name)
        assert split.categories == SYNTH_CATEGORIES
        assert [r.image_id for r in split.records] == list(range(first_id, first_id + count))
        for record in split.records:
            image = split.load_image(record)
            ids = split.load_panoptic(record)  # checks PNG ids ⊆ segments_info
            assert image.shape == (64, 64, 3) and ids.shape == (64, 64)
            assert {s.id for s in record.segments} == set(np.unique(ids).tolist()) - {0}
            for segment in record.segments:
                ys, xs = np.nonzero(ids == segment.id)
                assert segment.area == ys.size
                x0, y0 = xs.min(), ys.min()
                assert segment.bbox == (x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1)
                category = split.categories_by_id[segment.category_id]
                assert not segment.iscrowd or category.isthing  # only things form crowds
                assert segment.id // 1000 == segment.category_id
            stuff_ids = [s.category_id for s in record.segments if s.category_id in split.stuff_ids]
            assert len(stuff_ids) == len(set(stuff_ids)), "one segment per stuff class"


def test_the_data_has_what_the_task_needs(synth_train: PanopticSplit) -> None:
    """Many instances, every class, crowd and void: what makes the loss weights matter."""
    segments = [s for r in synth_train.records for s in r.segments]
    used = {s.category_id for s in segments}
    assert used == {c.id for c in SYNTH_CATEGORIES}
    crowd_images = sum(any(s.iscrowd for s in r.segments) for r in synth_train.records)
    assert 1 <= crowd_images < len(synth_train)
    things_per_image = [
        sum(s.category_id in synth_train.thing_ids and not s.iscrowd for s in r.segments)
        for r in synth_train.records
    ]
    assert min(things_per_image) >= 1 and np.mean(things_per_image) >= 4
    # a range of sizes, small ones included (64x64 images: 4096 pixels)
    areas = [s.area for s in segments if s.category_id in synth_train.thing_ids]
    assert min(areas) < 30 and max(areas) > 300
    void = [(synth_train.load_panoptic(r) == 0).mean() for r in synth_train.records]
    assert 0 < np.mean(void) < 0.1


def test_deterministic_by_seed() -> None:
    a = render_image(np.random.default_rng([7, 0, 3]), 48, 40)
    b = render_image(np.random.default_rng([7, 0, 3]), 48, 40)
    c = render_image(np.random.default_rng([8, 0, 3]), 48, 40)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[1], c[1])


def test_same_seed_same_files_and_image_i_independent_of_count(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", images=3, size="32x48", seed=1, val_images=1)
    synthesize(tmp_path / "b", images=3, size=(32, 48), seed=1, val_images=1)
    synthesize(tmp_path / "c", images=5, size="32x48", seed=1, val_images=2)
    synthesize(tmp_path / "d", images=3, size="32x48", seed=2, val_images=1)
    for rel in ("annotations/panoptic_train/000000000002.png", "train/000000000002.jpg"):
        data = (tmp_path / "a" / rel).read_bytes()
        assert data == (tmp_path / "b" / rel).read_bytes() == (tmp_path / "c" / rel).read_bytes()
        assert data != (tmp_path / "d" / rel).read_bytes()
    split = PanopticSplit.from_dir(tmp_path / "a", "train")
    assert (split.records[0].height, split.records[0].width) == (32, 48)
    a_json = json.loads((tmp_path / "a/annotations/panoptic_train.json").read_text())
    c_json = json.loads((tmp_path / "c/annotations/panoptic_train.json").read_text())
    assert a_json["annotations"] == c_json["annotations"][:3]


def test_default_val_count(tmp_path: Path) -> None:
    synthesize(tmp_path, images=9, size=16, seed=0)
    assert len(PanopticSplit.from_dir(tmp_path, "val")) == 2  # 9 // 4


@pytest.mark.parametrize(
    ("text", "size"), [("64", (64, 64)), ("480x640", (480, 640)), ("32X48", (32, 48))]
)
def test_parse_size(text: str, size: tuple[int, int]) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "a", "3x4x5", "8", "64x8"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)

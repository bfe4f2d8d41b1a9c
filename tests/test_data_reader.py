"""The COCO panoptic reader: the real sample, the writer's round trip, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.data import ADE20K_IMAGE_DIRS, LAYOUTS, real_sample_layout
from trainer_image.data.coco_panoptic import (
    Category,
    DatasetError,
    LayoutNotFound,
    PanopticSplit,
    escapes_folder,
    segment_stats,
    split_layouts,
    write_split,
)
from trainer_image.data.synth import synthesize

# --------------------------------------------------------------------------- real COCO


def test_the_real_coco_sample_loads(coco_sample: PanopticSplit) -> None:
    assert len(coco_sample) == 2
    assert len(coco_sample.categories) == 133
    assert (len(coco_sample.thing_ids), len(coco_sample.stuff_ids)) == (80, 53)
    # COCO ids have gaps (1..200); class indices are contiguous in id order
    assert sorted(coco_sample.category_index.values()) == list(range(133))
    assert coco_sample.category_index[1] == 0  # person
    assert max(coco_sample.category_index) == 200
    shapes = {r.image_id: (r.height, r.width) for r in coco_sample.records}
    assert shapes == {142238: (427, 640), 439180: (360, 640)}


def test_the_real_sample_decodes_and_agrees_with_its_json(coco_sample: PanopticSplit) -> None:
    for record in coco_sample.records:
        image = coco_sample.load_image(record)
        ids = coco_sample.load_panoptic(record)
        assert image.shape == (record.height, record.width, 3) and image.dtype == np.uint8
        assert ids.shape == (record.height, record.width)
        # COCO's own areas and bboxes are what the PNG holds
        for segment in record.segments:
            ys, xs = np.nonzero(ids == segment.id)
            assert segment.area == ys.size
            bbox = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert segment.bbox == bbox
    crowd = [s for r in coco_sample.records for s in r.segments if s.iscrowd]
    assert crowd, "the sample holds crowd segments"


def test_a_separate_categories_json_is_accepted(coco_sample_dir: Path, tmp_path: Path) -> None:
    # the panoptic JSON without categories, as some converters write it
    data = json.loads((coco_sample_dir / "panoptic_examples.json").read_text())
    del data["categories"]
    stripped = tmp_path / "panoptic.json"
    stripped.write_text(json.dumps(data))
    args = (stripped, coco_sample_dir / "panoptic_examples", coco_sample_dir / "input_images")
    with pytest.raises(DatasetError, match="no 'categories'"):
        PanopticSplit.from_files(*args)
    split = PanopticSplit.from_files(*args, coco_sample_dir / "panoptic_coco_categories.json")
    assert len(split.categories) == 133 and len(split) == 2


def test_gt_json_of_a_subset(coco_sample: PanopticSplit) -> None:
    sub = coco_sample.subset([439180])
    data = sub.gt_json()
    assert [i["id"] for i in data["images"]] == [439180]
    assert [a["image_id"] for a in data["annotations"]] == [439180]
    assert data["annotations"][0]["file_name"] == "000000439180.png"
    original = json.loads(coco_sample.json_path.read_text())
    expected = next(a for a in original["annotations"] if a["image_id"] == 439180)
    assert data["annotations"][0]["segments_info"] == expected["segments_info"]
    assert len(data["categories"]) == 133
    with pytest.raises(DatasetError, match="not in this split"):
        coco_sample.subset([1])


# --------------------------------------------------------------------------- writer


def test_write_split_computes_areas_and_bboxes(tmp_path: Path) -> None:
    categories = [Category(3, "blob", True, (1, 2, 3)), Category(7, "floor", False, (4, 5, 6))]
    ids = np.array(
        [
            [7, 7, 7, 7, 7],
            [7, 5, 5, 0, 7],
            [7, 5, 0, 9, 9],
            [7, 7, 7, 9, 9],
        ],
        dtype=np.int32,
    )
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    labels = {7: (7, False), 5: (3, False), 9: (3, True)}
    write_split(tmp_path, "val2017", categories, [(42, image, ids, labels)], image_format="png")
    split = PanopticSplit.from_dir(tmp_path, "val2017")
    (record,) = split.records
    assert record.image_id == 42
    assert (record.file_name, record.png_name) == ("000000000042.png", "000000000042.png")
    got = {s.id: (s.category_id, s.area, s.bbox, s.iscrowd) for s in record.segments}
    assert got == {
        5: (3, 3, (1, 1, 2, 2), False),
        7: (7, 11, (0, 0, 5, 4), False),
        9: (3, 4, (3, 2, 2, 2), True),
    }
    np.testing.assert_array_equal(split.load_panoptic(record), ids)
    assert split.category_index == {3: 0, 7: 1} and split.thing_ids == (3,)


def test_segment_stats_ignores_void_and_handles_one_segment() -> None:
    seg_ids, areas, bboxes = segment_stats(np.array([[0, 4], [0, 4]]))
    assert seg_ids.tolist() == [4] and areas.tolist() == [2] and bboxes.tolist() == [[1, 0, 1, 2]]


def test_write_split_refuses_unlabelled_ids(tmp_path: Path) -> None:
    categories = [Category(1, "a", True, (0, 0, 0))]
    ids = np.array([[1, 2]], dtype=np.int32)
    image = np.zeros((1, 2, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"ids \[2\] have no label"):
        write_split(tmp_path, "x", categories, [(1, image, ids, {1: (1, False)})])


# --------------------------------------------------------------------------- errors


@pytest.fixture
def small_dir(tmp_path: Path) -> Path:
    """A fresh, writable 3-image dataset to break."""
    synthesize(tmp_path, images=3, size=32, seed=5, val_images=1)
    return tmp_path


def _json_path(root: Path) -> Path:
    return root / "annotations" / "panoptic_train.json"


def _edit_json(root: Path, edit) -> None:
    data = json.loads(_json_path(root).read_text())
    edit(data)
    _json_path(root).write_text(json.dumps(data))


def test_error_corrupt_png(small_dir: Path) -> None:
    split = PanopticSplit.from_dir(small_dir, "train")
    png = split.png_path(split.records[1])
    png.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DatasetError, match=f"{png}: not a readable PNG"):
        split.load_panoptic(split.records[1])


def test_error_json_names_a_missing_png(small_dir: Path) -> None:
    png = small_dir / "annotations" / "panoptic_train" / "000000000002.png"
    png.unlink()
    with pytest.raises(DatasetError, match="names panoptic PNG files that do not exist") as err:
        PanopticSplit.from_dir(small_dir, "train")
    assert str(png) in str(err.value) and str(_json_path(small_dir)) in str(err.value)


def test_error_missing_image(small_dir: Path) -> None:
    image = small_dir / "train" / "000000000003.jpg"
    image.unlink()
    with pytest.raises(DatasetError, match="names image files that do not exist") as err:
        PanopticSplit.from_dir(small_dir, "train")
    assert str(image) in str(err.value)
    # removed after opening: loading says which file
    synthesize(small_dir, images=3, size=32, seed=5, val_images=1)
    split = PanopticSplit.from_dir(small_dir, "train")
    image.unlink()
    with pytest.raises(DatasetError, match=f"{image}: image does not exist"):
        split.load_image(split.records[2])


def test_error_corrupt_image(small_dir: Path) -> None:
    split = PanopticSplit.from_dir(small_dir, "train")
    path = split.image_path(split.records[0])
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetError, match=f"{path}: not a readable image"):
        split.load_image(split.records[0])


def test_error_unknown_category(small_dir: Path) -> None:
    def edit(data: dict) -> None:
        data["annotations"][1]["segments_info"][0]["category_id"] = 99

    _edit_json(small_dir, edit)
    with pytest.raises(DatasetError, match="unknown category id 99") as err:
        PanopticSplit.from_dir(small_dir, "train")
    message = str(err.value)
    assert str(_json_path(small_dir)) in message and "annotations[1]" in message


def test_error_png_id_missing_from_segments_info(small_dir: Path) -> None:
    def edit(data: dict) -> None:
        data["annotations"][0]["segments_info"].pop()

    _edit_json(small_dir, edit)
    split = PanopticSplit.from_dir(small_dir, "train")
    png = split.png_path(split.records[0])
    with pytest.raises(DatasetError, match="in the PNG but not in segments_info") as err:
        split.load_panoptic(split.records[0])
    assert str(png) in str(err.value)


def test_error_size_mismatch(small_dir: Path) -> None:
    def edit(data: dict) -> None:
        data["images"][0]["height"] = 31

    _edit_json(small_dir, edit)
    split = PanopticSplit.from_dir(small_dir, "train")
    with pytest.raises(DatasetError, match="the JSON says 32x31"):
        split.load_panoptic(split.records[0])
    with pytest.raises(DatasetError, match="the JSON says 32x31"):
        split.load_image(split.records[0])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("annotations"), "missing field 'annotations'"),
        (lambda d: d["images"][0].pop("height"), r"images\[0\]: missing field 'height'"),
        (lambda d: d["annotations"][0].update(image_id=777), "image_id 777 is not in 'images'"),
        (lambda d: d["categories"].append(d["categories"][0]), "duplicate category id 1"),
        (
            lambda d: d["annotations"][0]["segments_info"][0].update(id=0),
            "segment id 0 is reserved for void",
        ),
    ],
)
def test_error_malformed_json(small_dir: Path, edit, message: str) -> None:
    _edit_json(small_dir, edit)
    with pytest.raises(DatasetError, match=message):
        PanopticSplit.from_dir(small_dir, "train")


@pytest.mark.parametrize("entry", ["images", "annotations"])
@pytest.mark.parametrize("escape", ["absolute", "dotdot"])
def test_file_names_must_stay_inside_the_dataset(small_dir: Path, entry: str, escape: str) -> None:
    """A JSON naming a file outside its folder is refused with the entry named, even when that
    file exists (an absolute path or ``..`` would otherwise be read as given)."""
    folder = small_dir / "train" if entry == "images" else _json_path(small_dir).with_suffix("")
    existing = sorted(folder.iterdir())[0]
    name = str(existing) if escape == "absolute" else f"../{folder.name}/{existing.name}"
    _edit_json(small_dir, lambda data: data[entry][1].update(file_name=name))
    with pytest.raises(DatasetError, match="points outside the") as err:
        PanopticSplit.from_dir(small_dir, "train")
    assert f"{entry}[1]" in str(err.value) and repr(name) in str(err.value)


def test_file_names_in_subfolders_are_fine() -> None:
    assert not escapes_folder("sub/000000000001.png")
    assert escapes_folder("/etc/passwd") and escapes_folder("a/../../b.png")


def test_error_json_not_json(small_dir: Path) -> None:
    _json_path(small_dir).write_text("{not json")
    with pytest.raises(DatasetError, match=f"{_json_path(small_dir)}: not valid JSON"):
        PanopticSplit.from_dir(small_dir, "train")


def test_png_ids_follow_the_coco_encoding(small_dir: Path) -> None:
    # decode one PNG independently of our codec: PIL + R + 256 G + 256^2 B
    from PIL import Image

    split = PanopticSplit.from_dir(small_dir, "train")
    record = split.records[0]
    with Image.open(split.png_path(record)) as img:
        rgb = np.asarray(img.convert("RGB")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    assert set(np.unique(ids).tolist()) - {0} == {s.id for s in record.segments}


def test_ade20k_style_string_ids_and_explicit_paths(tmp_path: Path) -> None:
    """detectron2's ADE20K converter: string image ids, its own folder names."""
    categories = [Category(1, "wall", False, (120, 120, 120)), Category(2, "bed", True, (4, 5, 6))]
    ids = np.array([[1, 1, 2], [1, 2, 2]], dtype=np.int32)
    image = np.full((2, 3, 3), 128, dtype=np.uint8)
    items = [(f"ADE_val_0000000{i}", image, ids, {1: (1, False), 2: (2, False)}) for i in (2, 1)]
    write_split(tmp_path, "validation", categories, items, image_format="png")
    ade = tmp_path / "ADEChallengeData2016"
    (ade / "images").mkdir(parents=True)
    (tmp_path / "annotations" / "panoptic_validation.json").rename(ade / "ade20k_panoptic_val.json")
    (tmp_path / "annotations" / "panoptic_validation").rename(ade / "ade20k_panoptic_val")
    (tmp_path / "validation").rename(ade / "images" / "validation")
    split = PanopticSplit.from_files(
        ade / "ade20k_panoptic_val.json", ade / "ade20k_panoptic_val", ade / "images/validation"
    )
    assert PanopticSplit.from_dir(ade, "val").records == split.records  # found by layout
    assert [r.image_id for r in split.records] == ["ADE_val_00000002", "ADE_val_00000001"]
    record = split.record("ADE_val_00000001")
    assert record.png_name == "ADE_val_00000001.png"
    np.testing.assert_array_equal(split.load_panoptic(record), ids)
    assert split.load_image(record).shape == (2, 3, 3)
    assert split.stuff_ids == (1,) and split.class_is_thing == (False, True)


# --------------------------------------------------------------------------- layouts


def expected_paths(root: Path, layout: str, split: str) -> tuple[Path, Path, Path]:
    """Where each layout keeps split ``split`` (train / val), written out by hand."""
    if layout == "ade20k":
        images = root / "images" / ADE20K_IMAGE_DIRS[split]
        return root / f"ade20k_panoptic_{split}.json", root / f"ade20k_panoptic_{split}", images
    coco = f"{split}2017"
    pngs = (root / "annotations" if layout == "coco" else root) / f"panoptic_{coco}"
    return root / "annotations" / f"panoptic_{coco}.json", pngs, root / coco


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("split", ["train", "val"])
def test_real_layouts_open_by_split_name(
    coco_sample: PanopticSplit, coco_sample_dir: Path, tmp_path: Path, layout: str, split: str
) -> None:
    """COCO 2017 (official zip and detectron2) and ADE20K (detectron2's converter) trees of
    the real sample open with the trainers' ``--split train|val``, and with the dataset's
    own split name (``val2017``, ``validation``) too."""
    root = real_sample_layout(coco_sample_dir, tmp_path, layout)
    opened = PanopticSplit.from_dir(root, split)
    assert (opened.json_path, opened.png_dir, opened.image_dir) == expected_paths(
        root, layout, split
    )
    if layout == "ade20k":  # string ids, 0-based categories, as the converter writes them
        assert [r.image_id for r in opened.records] == ["ADE_00000001", "ADE_00000002"]
        assert opened.categories[0].id == 0 and len(opened.categories) == 133
    else:
        assert opened.records == coco_sample.records
    for record in opened.records:
        assert opened.load_image(record).shape[:2] == opened.load_panoptic(record).shape
    own_name = ADE20K_IMAGE_DIRS[split] if layout == "ade20k" else f"{split}2017"
    assert PanopticSplit.from_dir(root, own_name).records == opened.records


def test_our_layout_comes_first(synth_dir: Path) -> None:
    assert split_layouts(synth_dir, "train")[0][1] == (
        synth_dir / "annotations" / "panoptic_train.json",
        synth_dir / "annotations" / "panoptic_train",
        synth_dir / "train",
    )
    assert PanopticSplit.from_dir(synth_dir, "train").image_dir == synth_dir / "train"


def test_an_unknown_layout_lists_every_path_tried(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "panoptic_val2017.json").write_text("{}")  # no PNGs, no images
    with pytest.raises(LayoutNotFound) as err:
        PanopticSplit.from_dir(tmp_path, "val")
    message = str(err.value)
    for _, paths in split_layouts(tmp_path, "val"):
        for path in paths:
            assert str(path) in message
    assert "ADE20K" in message and "COCO 2017 (detectron2)" in message
    assert f"missing: {tmp_path / 'annotations' / 'panoptic_val2017'}," in message

"""Reader and writer for the COCO panoptic format.

One split is a panoptic JSON (``images``, ``annotations`` with ``segments_info``,
``categories``), a folder of panoptic PNGs (segment id = R + 256·G + 256²·B)
and a folder of images. ``PanopticSplit.from_dir(DIR, split)`` finds the three
in any of the layouts real data comes in (:func:`split_layouts`), so COCO 2017
and ADE20K panoptic load unchanged, and ``--data DIR --split train`` means the
same thing whichever of them DIR holds::

    ours (write_split, synth):  annotations/panoptic_{split}.json, annotations/panoptic_{split}/,
                                {split}/
    COCO 2017 (official zip):   annotations/panoptic_{s}.json, annotations/panoptic_{s}/, {s}/
    COCO 2017 (detectron2):     annotations/panoptic_{s}.json, panoptic_{s}/, {s}/
    ADE20K (detectron2's        ade20k_panoptic_{train,val}.json, ade20k_panoptic_{train,val}/,
      prepare_ade20k_pan_seg):  images/{training,validation}/

where ``s`` is ``train2017`` / ``val2017`` for ``--split train`` / ``val`` (or
``--split train2017`` itself). ``PanopticSplit.from_files`` takes
the three paths explicitly (the COCO panoptic API's sample data uses other names).

Everything cheap is validated when the split is opened (JSON structure,
unknown category ids, file names that are absolute or climb out of their
folder with ``..``, files named in the JSON but absent), the rest when a
file is loaded (corrupt PNG or image, size mismatch, PNG ids without a
``segments_info`` entry). Every error is a ``DatasetError`` naming the file and
what is wrong, because a training pod that dies with a bare ``KeyError`` after
an hour tells nobody which of 118k files to fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from trainer_image.data.panoptic_png import (
    PanopticPngError,
    read_panoptic_png,
    write_panoptic_png,
)

ImageId = int | str
"""COCO uses integer image ids; detectron2's ADE20K converter uses file stems."""

VOID_LABEL = 255
"""The model's class index for pixels that carry no class (void, id 0)."""


class DatasetError(ValueError):
    """A dataset file is missing, corrupt or inconsistent; the message names it."""


class LayoutNotFound(DatasetError):
    """No known layout holds the split under the data directory; the message lists the
    paths tried, so a wrong ``--data`` or ``--split`` is a one-line fix."""


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]
    supercategory: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "isthing": int(self.isthing),
            "color": list(self.color),
            "supercategory": self.supercategory,
        }


@dataclass(frozen=True)
class Segment:
    id: int
    category_id: int
    area: int
    iscrowd: bool
    bbox: tuple[int, int, int, int]  # COCO [x, y, width, height]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category_id": self.category_id,
            "area": self.area,
            "bbox": list(self.bbox),
            "iscrowd": int(self.iscrowd),
        }


@dataclass(frozen=True)
class Record:
    image_id: ImageId
    file_name: str  # the image, relative to the image folder
    png_name: str  # the panoptic PNG, relative to the PNG folder
    height: int
    width: int
    segments: tuple[Segment, ...]


# --------------------------------------------------------------------------- parsing


def _load_json(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: panoptic JSON does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``obj[key]`` checked for presence and type, with an error saying where."""
    if not isinstance(obj, dict) or key not in obj:
        raise DatasetError(f"{where}: missing field {key!r}")
    value = obj[key]
    # bool is an int subclass; a JSON true where a number belongs is still wrong
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise DatasetError(f"{where}: field {key!r} has the wrong type ({value!r})")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def escapes_folder(file_name: str) -> bool:
    """Whether a ``file_name`` from a JSON would name a file outside the folder it is joined
    to: an absolute path (``folder / "/etc/passwd"`` is ``/etc/passwd``) or one with a ``..``
    part. A dataset is read from its root only; subfolders are fine."""
    path = PurePosixPath(file_name)
    return path.is_absolute() or ".." in path.parts


def _file_name(obj: Any, where: str, what: str) -> str:
    """``obj["file_name"]``: a string naming a file inside the dataset's ``what`` folder."""
    name = _field(obj, "file_name", str, where)
    if escapes_folder(name):
        raise DatasetError(
            f"{where}: file_name {name!r} points outside the {what} folder (absolute, or with "
            "'..'); file names must be relative to the dataset's folders"
        )
    return name


def parse_categories(raw: Any, source: str) -> list[Category]:
    """The ``categories`` list of a panoptic JSON → ``Category`` sorted by id."""
    if not isinstance(raw, list) or not raw:
        raise DatasetError(f"{source}: 'categories' must be a non-empty list")
    categories: dict[int, Category] = {}
    for n, item in enumerate(raw):
        where = f"{source}: categories[{n}]"
        cid = _field(item, "id", int, where)
        if cid in categories:
            raise DatasetError(f"{where}: duplicate category id {cid}")
        color = item.get("color", (0, 0, 0))
        if not (isinstance(color, list | tuple) and len(color) == 3):
            raise DatasetError(f"{where}: 'color' must be three integers, got {color!r}")
        categories[cid] = Category(
            id=cid,
            name=str(_field(item, "name", str, where)),
            isthing=bool(_field(item, "isthing", (int, bool), where)),
            color=(int(color[0]), int(color[1]), int(color[2])),
            supercategory=str(item.get("supercategory", "")),
        )
    return [categories[cid] for cid in sorted(categories)]


def _parse_segment(item: Any, where: str, known: Mapping[int, Category]) -> Segment:
    sid = _field(item, "id", int, where)
    cid = _field(item, "category_id", int, where)
    if cid not in known:
        raise DatasetError(f"{where}: unknown category id {cid} (segment {sid})")
    bbox = item.get("bbox", (0, 0, 0, 0))
    if not (isinstance(bbox, list | tuple) and len(bbox) == 4):
        raise DatasetError(f"{where}: 'bbox' must be [x, y, w, h], got {bbox!r}")
    return Segment(
        id=sid,
        category_id=cid,
        area=int(item.get("area", 0)),
        iscrowd=bool(item.get("iscrowd", 0)),
        bbox=(int(bbox[0]), int(bbox[1]), int(bbox[2]), int(bbox[3])),
    )


def parse_records(data: Any, source: str, categories: Sequence[Category]) -> list[Record]:
    """Join ``images`` and ``annotations`` of a panoptic JSON into ``Record``s.

    Images without an annotation are left out (an image-info file lists images
    only); an annotation without an image is an error.
    """
    images = _field(data, "images", list, source)
    annotations = _field(data, "annotations", list, source)
    known = {c.id: c for c in categories}
    by_id: dict[ImageId, dict[str, Any]] = {}
    for n, image in enumerate(images):
        where = f"{source}: images[{n}]"
        image_id = _field(image, "id", (int, str), where)
        if image_id in by_id:
            raise DatasetError(f"{where}: duplicate image id {image_id!r}")
        _file_name(image, where, "image")
        _field(image, "height", int, where)
        _field(image, "width", int, where)
        by_id[image_id] = image
    records: list[Record] = []
    seen: set[ImageId] = set()
    for n, ann in enumerate(annotations):
        where = f"{source}: annotations[{n}]"
        image_id = _field(ann, "image_id", (int, str), where)
        if image_id not in by_id:
            raise DatasetError(f"{where}: image_id {image_id!r} is not in 'images'")
        if image_id in seen:
            raise DatasetError(f"{where}: second annotation for image {image_id!r}")
        seen.add(image_id)
        where = f"{where} (image {image_id!r})"
        raw_segments = _field(ann, "segments_info", list, where)
        segments = tuple(
            _parse_segment(s, f"{where}: segments_info[{k}]", known)
            for k, s in enumerate(raw_segments)
        )
        ids = [s.id for s in segments]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"{where}: duplicate segment ids in segments_info")
        if 0 in ids:
            raise DatasetError(f"{where}: segment id 0 is reserved for void")
        image = by_id[image_id]
        records.append(
            Record(
                image_id=image_id,
                file_name=image["file_name"],
                png_name=_file_name(ann, where, "panoptic PNG"),
                height=image["height"],
                width=image["width"],
                segments=segments,
            )
        )
    return records


def _check_files_exist(folder: Path, names: Iterable[str], what: str, source: Path) -> None:
    """Fail early, naming the files, when the JSON names files the folder lacks.

    One directory listing instead of a stat per file: COCO train has 118k.
    """
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} folder does not exist (named by {source})")
    present = set(os.listdir(folder))
    missing = [
        name
        for name in names
        if name not in present and ("/" not in name or not (folder / name).is_file())
    ]
    if missing:
        shown = ", ".join(str(folder / m) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(f"{source} names {what} files that do not exist: {shown}{more}")


# --------------------------------------------------------------------------- layouts

SplitPaths = tuple[Path, Path, Path]
"""(panoptic JSON, panoptic PNG folder, image folder) of one split."""

_COCO_SPLITS = {"train": "train2017", "val": "val2017"}
_ADE20K_IMAGE_DIRS = {"train": "training", "val": "validation"}


def split_layouts(root: str | Path, split: str) -> list[tuple[str, SplitPaths]]:
    """Every ``(layout name, paths)`` that ``split`` could have under ``root``, in the order
    :meth:`PanopticSplit.from_dir` tries them (ours first: it is what ``write_split`` writes).

    COCO's splits are ``train2017`` / ``val2017``; ``train`` / ``val`` map to them, so the
    trainers' default ``--split train`` needs no change for real COCO. ADE20K's converter
    names the JSON by ``train`` / ``val`` and the image folders ``training`` / ``validation``
    (either name selects the split).
    """
    root, ann = Path(root), Path(root) / "annotations"
    layouts = [
        ("adaseg", (ann / f"panoptic_{split}.json", ann / f"panoptic_{split}", root / split))
    ]
    coco = _COCO_SPLITS.get(split, split)
    if coco.endswith("2017"):
        if coco != split:  # for split = val2017 this is the adaseg layout already
            paths = (ann / f"panoptic_{coco}.json", ann / f"panoptic_{coco}", root / coco)
            layouts.append(("COCO 2017", paths))
        paths = (ann / f"panoptic_{coco}.json", root / f"panoptic_{coco}", root / coco)
        layouts.append(("COCO 2017 (detectron2)", paths))
    ade = {v: k for k, v in _ADE20K_IMAGE_DIRS.items()}.get(split, split)  # training -> train
    if ade in _ADE20K_IMAGE_DIRS:
        paths = (
            root / f"ade20k_panoptic_{ade}.json",
            root / f"ade20k_panoptic_{ade}",
            root / "images" / _ADE20K_IMAGE_DIRS[ade],
        )
        layouts.append(("ADE20K (detectron2)", paths))
    return layouts


def find_split_layout(root: str | Path, split: str) -> SplitPaths:
    """The paths of the first layout of :func:`split_layouts` that exists in full."""
    tried = split_layouts(root, split)
    for _, (json_path, png_dir, image_dir) in tried:
        if json_path.is_file() and png_dir.is_dir() and image_dir.is_dir():
            return json_path, png_dir, image_dir
    lines = []
    for name, paths in tried:
        missing = [str(p) for p in paths if not p.exists()]
        lines.append(f"  {name}: {', '.join(map(str, paths))} (missing: {', '.join(missing)})")
    raise LayoutNotFound(
        f"no panoptic split {split!r} under {root}; tried (JSON, PNG folder, image folder):\n"
        + "\n".join(lines)
    )


# --------------------------------------------------------------------------- the split


class PanopticSplit:
    """One split: categories, records, and where its files are.

    ``category_index`` maps COCO category ids (arbitrary, e.g. 1..200 with gaps)
    to the model's contiguous class indices 0..C-1 in id order; void pixels get
    ``VOID_LABEL``.
    """

    def __init__(
        self,
        categories: Sequence[Category],
        records: Sequence[Record],
        png_dir: str | Path,
        image_dir: str | Path,
        json_path: str | Path | None = None,
    ) -> None:
        self.categories: list[Category] = sorted(categories, key=lambda c: c.id)
        self.records: list[Record] = list(records)
        self.png_dir = Path(png_dir)
        self.image_dir = Path(image_dir)
        self.json_path = Path(json_path) if json_path is not None else None
        self.category_index: dict[int, int] = {c.id: i for i, c in enumerate(self.categories)}
        self.categories_by_id: dict[int, Category] = {c.id: c for c in self.categories}
        self.thing_ids: tuple[int, ...] = tuple(c.id for c in self.categories if c.isthing)
        self.stuff_ids: tuple[int, ...] = tuple(c.id for c in self.categories if not c.isthing)
        # per contiguous class index, for models and targets
        self.class_is_thing: tuple[bool, ...] = tuple(c.isthing for c in self.categories)
        self._by_image_id = {r.image_id: r for r in self.records}

    # ---- construction

    @classmethod
    def from_dir(cls, root: str | Path, split: str) -> PanopticSplit:
        """Split ``split`` of the dataset under ``root``, in the first of
        :func:`split_layouts` whose JSON, PNG folder and image folder all exist.

        Raises ``LayoutNotFound`` (listing every path tried) when none fits.
        """
        json_path, png_dir, image_dir = find_split_layout(root, split)
        return cls.from_files(json_path, png_dir, image_dir)

    @classmethod
    def from_files(
        cls,
        json_path: str | Path,
        png_dir: str | Path,
        image_dir: str | Path,
        categories_json: str | Path | None = None,
    ) -> PanopticSplit:
        """Explicit paths. ``categories_json`` (a list, like the COCO API's
        ``panoptic_coco_categories.json``, or a dict with ``categories``) takes
        precedence over the panoptic JSON's own ``categories``, which may then
        be absent.
        """
        json_path, png_dir, image_dir = Path(json_path), Path(png_dir), Path(image_dir)
        data = _load_json(json_path)
        if not isinstance(data, dict):
            raise DatasetError(f"{json_path}: expected a JSON object")
        if categories_json is not None:
            cat_path = Path(categories_json)
            raw = _load_json(cat_path)
            raw = raw.get("categories") if isinstance(raw, dict) else raw
            categories = parse_categories(raw, str(cat_path))
        elif "categories" in data:
            categories = parse_categories(data["categories"], str(json_path))
        else:
            raise DatasetError(f"{json_path}: no 'categories' and no categories JSON given")
        records = parse_records(data, str(json_path), categories)
        _check_files_exist(png_dir, (r.png_name for r in records), "panoptic PNG", json_path)
        _check_files_exist(image_dir, (r.file_name for r in records), "image", json_path)
        return cls(categories, records, png_dir, image_dir, json_path)

    # ---- access

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (
            f"PanopticSplit({len(self.records)} images, {len(self.categories)} categories "
            f"({len(self.thing_ids)} things), png_dir={str(self.png_dir)!r})"
        )

    def record(self, image_id: ImageId) -> Record:
        try:
            return self._by_image_id[image_id]
        except KeyError:
            raise DatasetError(f"image id {image_id!r} is not in this split") from None

    def image_path(self, record: Record) -> Path:
        return self.image_dir / record.file_name

    def png_path(self, record: Record) -> Path:
        return self.png_dir / record.png_name

    def load_image(self, record: Record) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB."""
        from PIL import Image, UnidentifiedImageError

        path = self.image_path(record)
        try:
            with Image.open(path) as img:
                image = np.array(img.convert("RGB"))  # writable, unlike asarray
        except FileNotFoundError:
            raise DatasetError(f"{path}: image does not exist") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"{path}: not a readable image ({exc})") from None
        if image.shape[:2] != (record.height, record.width):
            raise DatasetError(
                f"{path}: image is {image.shape[1]}x{image.shape[0]} (WxH), the JSON says "
                f"{record.width}x{record.height}"
            )
        return image

    def load_panoptic(self, record: Record, check: bool = True) -> np.ndarray:
        """The panoptic PNG as (H, W) int32 segment ids (0 = void).

        ``check`` verifies that every id in the PNG has a ``segments_info``
        entry; it costs one ``np.unique``, so a hot loop that already trusts
        the data may skip it.
        """
        path = self.png_path(record)
        try:
            ids = read_panoptic_png(path)
        except PanopticPngError as exc:
            raise DatasetError(str(exc)) from None
        if ids.shape != (record.height, record.width):
            raise DatasetError(
                f"{path}: panoptic PNG is {ids.shape[1]}x{ids.shape[0]} (WxH), the JSON says "
                f"{record.width}x{record.height}"
            )
        if check:
            present = np.unique(ids)
            known = np.array([0, *(s.id for s in record.segments)], dtype=np.int64)
            unknown = present[~np.isin(present, known)]
            if unknown.size:
                raise DatasetError(
                    f"{path}: segment ids {unknown[:10].tolist()} are in the PNG but not in "
                    f"segments_info of image {record.image_id!r}"
                )
        return ids

    def subset(self, image_ids: Iterable[ImageId]) -> PanopticSplit:
        """The records of ``image_ids``, in this split's order."""
        wanted = set(image_ids)
        unknown = wanted - self._by_image_id.keys()
        if unknown:
            shown = sorted(map(repr, unknown))[:5]
            raise DatasetError(f"image ids not in this split: {', '.join(shown)}")
        records = [r for r in self.records if r.image_id in wanted]
        return PanopticSplit(self.categories, records, self.png_dir, self.image_dir, self.json_path)

    def gt_json(self) -> dict[str, Any]:
        """This split as a panoptic JSON dict (what ``pq_compute`` reads)."""
        return {
            "images": [
                {"id": r.image_id, "file_name": r.file_name, "height": r.height, "width": r.width}
                for r in self.records
            ],
            "annotations": [
                {
                    "image_id": r.image_id,
                    "file_name": r.png_name,
                    "segments_info": [s.to_json() for s in r.segments],
                }
                for r in self.records
            ],
            "categories": [c.to_json() for c in self.categories],
        }


# --------------------------------------------------------------------------- writing


def segment_stats(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-void segment ids of an (H, W) map with their pixel areas and COCO bboxes.

    Returns ``(ids (n,), areas (n,), bboxes (n, 4) as [x, y, w, h])``, ids
    ascending. Vectorised: one ``np.unique`` and two ``bincount`` over
    (segment, row) and (segment, column) occupancy, no loop over segments.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"segment ids must be a 2-D map, got shape {ids.shape}")
    h, w = ids.shape
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(h, w)
    n = len(uniq)
    rows = np.bincount((inverse * h + np.arange(h)[:, None]).ravel(), minlength=n * h)
    cols = np.bincount((inverse * w + np.arange(w)[None, :]).ravel(), minlength=n * w)
    rows = rows.reshape(n, h) > 0
    cols = cols.reshape(n, w) > 0
    y0 = rows.argmax(axis=1)
    y1 = h - 1 - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = w - 1 - cols[:, ::-1].argmax(axis=1)
    bboxes = np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], axis=1)
    keep = uniq != 0
    return uniq[keep].astype(np.int64), counts[keep].astype(np.int64), bboxes[keep]


def write_split(
    root: str | Path,
    split: str,
    categories: Sequence[Category],
    items: Iterable[tuple[ImageId, np.ndarray, np.ndarray, Mapping[int, tuple[int, bool]]]],
    image_format: str = "jpg",
) -> Path:
    """Write one split in the ``from_dir`` layout; returns the JSON path.

    Each item is ``(image_id, image (H, W, 3) uint8, ids (H, W) int, labels)``
    with ``labels`` mapping every non-zero id in ``ids`` to
    ``(category_id, iscrowd)``. Areas and bboxes are computed from ``ids``, so
    the JSON always agrees with the PNG (``pq_compute`` takes ground-truth
    areas from the JSON). ``image_format`` is ``"jpg"`` (quality 95) or
    ``"png"`` (lossless).
    """
    from PIL import Image

    if image_format not in {"jpg", "png"}:
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    root = Path(root)
    json_path = root / "annotations" / f"panoptic_{split}.json"
    png_dir = root / "annotations" / f"panoptic_{split}"
    image_dir = root / split
    png_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    known = {c.id for c in categories}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, image, ids, labels in items:
        stem = f"{image_id:012d}" if isinstance(image_id, int) else str(image_id)
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {image_id!r}: expected (H, W, 3) uint8, got {image.shape}")
        if image.shape[:2] != ids.shape:
            raise ValueError(f"image {image_id!r}: image {image.shape[:2]} != ids {ids.shape}")
        seg_ids, areas, bboxes = segment_stats(ids)
        unlabelled = set(seg_ids.tolist()) - labels.keys()
        if unlabelled:
            raise ValueError(f"image {image_id!r}: ids {sorted(unlabelled)} have no label")
        segments = []
        for sid, area, bbox in zip(seg_ids.tolist(), areas.tolist(), bboxes.tolist(), strict=True):
            category_id, iscrowd = labels[sid]
            if category_id not in known:
                raise ValueError(f"image {image_id!r}: unknown category id {category_id}")
            segments.append(Segment(sid, category_id, area, bool(iscrowd), tuple(bbox)).to_json())
        file_name = f"{stem}.{image_format}"
        if image_format == "jpg":
            Image.fromarray(image).save(image_dir / file_name, quality=95)
        else:
            Image.fromarray(image).save(image_dir / file_name, compress_level=1)
        write_panoptic_png(png_dir / f"{stem}.png", ids)
        h, w = ids.shape
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        annotations.append(
            {"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments}
        )
    data = {
        "info": {"description": f"adaseg panoptic split {split!r}"},
        "images": images,
        "annotations": annotations,
        "categories": [c.to_json() for c in categories],
    }
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(json_path)
    return json_path

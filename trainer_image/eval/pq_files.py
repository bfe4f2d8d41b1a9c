"""PQ of predictions stored as files, a drop-in for panopticapi's ``pq_compute``.

``pq_compute_files`` reads the same inputs as ``pq_compute`` (a panoptic JSON
and a PNG folder for ground truth and for predictions) and returns the same
dict; ``adaseg pq`` prints the same table, or that dict with ``--json``.

Reading files is where the time goes, so the PNGs are decoded with the
fastest decoder at hand (``imgread``, else libspng through
``panoptic_png.decode_rgb``) and the run-length pass of ``eval/pq.py``
compares their RGB bytes directly: ids (R + 256·G + 256²·B) are computed for
the few thousand run starts only, never for the whole image. ``workers``
processes each evaluate a share of the images and their statistics are
merged.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from trainer_image.data.coco_panoptic import escapes_folder
from trainer_image.data.panoptic_png import PanopticPngError, decode_rgb
from trainer_image.eval.pq import PairRuns, PQEvaluator, PQInputError

try:  # optional: the fastest PNG decoder found on PyPI (see _read_png)
    import imgread
except ImportError:  # pragma: no cover - exercised only without imgread
    imgread = None

__all__ = ["pq_compute_files"]

_ANNOTATION_KEYS = ("image_id", "file_name", "segments_info")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_png(folder: Path, file_name: str) -> np.ndarray:
    """(H, W, 3) uint8 colours of one panoptic PNG (ids are taken later, per run).

    Decoding is most of the time of an evaluation from files. ``imgread``
    (Rust ``png``) decodes these PNGs about 1.6x faster than libspng, so it is
    used when installed; ``decode_rgb`` (libspng, else PIL) otherwise.
    """
    path = folder / file_name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PanopticPngError(f"{path}: panoptic PNG does not exist") from None
    if imgread is None:
        return decode_rgb(data, str(path))
    if not data.startswith(_PNG_SIGNATURE):  # imgread also reads JPEG and TIFF
        raise PanopticPngError(f"{path}: not a readable PNG (no PNG signature)")
    try:
        return imgread.load_numpy_from_bytes(data)
    except (ValueError, RuntimeError) as exc:
        raise PanopticPngError(f"{path}: not a readable PNG ({exc})") from None


def _evaluate_pairs(
    categories: Sequence[Mapping],
    pairs: Sequence[tuple[Mapping, Mapping]],
    gt_folder: Path,
    pred_folder: Path,
) -> PQEvaluator:
    """One worker's share: decode each pair of PNGs and add it to a fresh evaluator."""
    evaluator = PQEvaluator(categories)
    encode = PairRuns()
    for gt_ann, pred_ann in pairs:
        image_id = gt_ann["image_id"]
        gt_map = _read_png(gt_folder, gt_ann["file_name"])
        pred_map = _read_png(pred_folder, pred_ann["file_name"])
        if gt_map.shape != pred_map.shape:
            raise PQInputError(
                f"image {image_id}: prediction {pred_ann['file_name']} is {pred_map.shape[:2]}, "
                f"ground truth {gt_ann['file_name']} is {gt_map.shape[:2]}"
            )
        runs = encode.rgb(gt_map, pred_map)
        evaluator.add_runs(*runs, pred_ann["segments_info"], gt_ann["segments_info"], image_id)
    return evaluator


def _evaluate_pairs_star(args: tuple) -> PQEvaluator:
    return _evaluate_pairs(*args)


def _load_json(path: Path, what: str, keys: tuple[str, ...]) -> dict:
    try:
        with path.open() as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise PQInputError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise PQInputError(f"{what} {path} is not valid JSON: {exc}") from None
    missing = [key for key in keys if key not in data]
    if missing:
        raise PQInputError(f"{what} {path} lacks {missing}")
    return data


def _matched_annotations(gt: dict, pred: dict) -> list[tuple[Mapping, Mapping]]:
    """(gt, pred) annotation pairs in ground-truth order, as pq_compute pairs them."""
    for what, data in (("ground truth", gt), ("prediction", pred)):
        for ann in data["annotations"]:
            missing = [key for key in _ANNOTATION_KEYS if key not in ann]
            if missing:
                raise PQInputError(f"a {what} annotation lacks {missing}: {str(ann)[:200]}")
            name = ann["file_name"]
            if not isinstance(name, str) or escapes_folder(name):
                raise PQInputError(
                    f"{what} annotation of image {ann['image_id']!r}: file_name {name!r} must "
                    "be a path inside its PNG folder (relative, without '..')"
                )
    pred_by_image = {ann["image_id"]: ann for ann in pred["annotations"]}
    pairs = []
    for gt_ann in gt["annotations"]:
        pred_ann = pred_by_image.get(gt_ann["image_id"])
        if pred_ann is None:
            raise PQInputError(f"no prediction for the image with id: {gt_ann['image_id']}")
        pairs.append((gt_ann, pred_ann))
    return pairs


def _default_folder(json_path: Path, folder: str | Path | None) -> Path:
    """pq_compute's default: the JSON's path without ``.json``."""
    return Path(folder) if folder is not None else Path(str(json_path).replace(".json", ""))


def pq_compute_files(
    gt_json: str | Path,
    gt_folder: str | Path | None,
    pred_json: str | Path,
    pred_folder: str | Path | None,
    workers: int = 2,
) -> dict:
    """``panopticapi.evaluation.pq_compute`` on the same files, returning the same dict.

    A folder of ``None`` means pq_compute's default (the JSON path without
    ``.json``). ``workers`` processes share the images (1: no process pool).
    """
    if workers < 1:
        raise PQInputError(f"workers must be at least 1, got {workers}")
    gt_json, pred_json = Path(gt_json), Path(pred_json)
    gt = _load_json(gt_json, "ground truth JSON", ("annotations", "categories"))
    pred = _load_json(pred_json, "prediction JSON", ("annotations",))
    gt_dir, pred_dir = _default_folder(gt_json, gt_folder), _default_folder(pred_json, pred_folder)
    for folder, what in ((gt_dir, "ground truth"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise PQInputError(f"folder {folder} with {what} segmentations does not exist")
    categories = gt["categories"]
    pairs = _matched_annotations(gt, pred)
    evaluator = PQEvaluator(categories)
    workers = min(workers, max(len(pairs), 1))
    if workers == 1:
        evaluator.merge(_evaluate_pairs(categories, pairs, gt_dir, pred_dir))
        return evaluator.result()
    # Several shares per worker even out images that take longer than others.
    shares = [list(share) for share in np.array_split(np.arange(len(pairs)), workers * 4)]
    tasks = [(categories, [pairs[i] for i in share], gt_dir, pred_dir) for share in shares if share]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(workers) as pool:
        for partial in pool.imap_unordered(_evaluate_pairs_star, tasks):
            evaluator.merge(partial)
    return evaluator.result()

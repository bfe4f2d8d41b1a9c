"""Augmentation of (image, panoptic ids) pairs, before training targets are built.

Targets (semantic map, center heatmap, offsets) are derived from the augmented
ids, so the ids must stay exact segment ids: they are resized by nearest
neighbour (never interpolated: a blend of two ids is a third, unrelated id),
padded with void (0), and flipped and cropped together with the image.
"""

from __future__ import annotations

import numpy as np

Pair = tuple[np.ndarray, np.ndarray]


def _nearest_indices(new: int, old: int) -> np.ndarray:
    """Source index of each of ``new`` output pixels, sampling pixel centres
    (what PIL's NEAREST does)."""
    return np.minimum(((np.arange(new) + 0.5) * (old / new)).astype(np.int64), old - 1)


def resize_pair(image: np.ndarray, ids: np.ndarray, height: int, width: int) -> Pair:
    """Image bilinearly (PIL, in C), ids by nearest neighbour."""
    from PIL import Image

    h, w = ids.shape
    if (height, width) == (h, w):
        return image, ids
    resized = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    ids = ids[_nearest_indices(height, h)][:, _nearest_indices(width, w)]
    return resized, ids


def _crop_size(crop_size: int | tuple[int, int]) -> tuple[int, int]:
    ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    if ch < 1 or cw < 1:
        raise ValueError(f"crop size must be positive, got {crop_size!r}")
    return int(ch), int(cw)


class TrainTransform:
    """Random scale, crop (padding with void when the image is smaller) and
    horizontal flip.

    Randomness comes from the ``rng`` passed to each call (the loader derives
    one per sample from its seed, so results do not depend on the number of
    workers) or, without one, from the transform's own generator seeded by
    ``seed``. ``fill`` is the RGB value of padded image pixels; the loader
    passes the normalisation mean so padding normalises to zero.
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.75, 1.25),
        crop_size: int | tuple[int, int] | None = None,
        flip: bool = True,
        seed: int = 0,
        fill: tuple[int, ...] = (0, 0, 0),
    ) -> None:
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (float(low), float(high))
        self.crop_size = None if crop_size is None else _crop_size(crop_size)
        self.flip = flip
        self.fill = np.asarray(fill, dtype=np.uint8)
        self._rng = np.random.default_rng(seed)

    def __call__(
        self, image: np.ndarray, ids: np.ndarray, rng: np.random.Generator | None = None
    ) -> Pair:
        rng = self._rng if rng is None else rng
        h, w = ids.shape
        scale = rng.uniform(*self.scale_range)
        image, ids = resize_pair(image, ids, max(1, round(h * scale)), max(1, round(w * scale)))
        if self.crop_size is not None:
            image, ids = self._crop(image, ids, rng)
        if self.flip and rng.random() < 0.5:
            image, ids = image[:, ::-1], ids[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(ids)

    def _crop(self, image: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> Pair:
        assert self.crop_size is not None
        ch, cw = self.crop_size
        h, w = ids.shape
        if h < ch or w < cw:  # pad bottom/right: image with fill, ids with void
            ph, pw = max(ch, h), max(cw, w)
            padded_image = np.empty((ph, pw, 3), dtype=image.dtype)
            padded_image[...] = self.fill
            padded_image[:h, :w] = image
            padded_ids = np.zeros((ph, pw), dtype=ids.dtype)
            padded_ids[:h, :w] = ids
            image, ids, h, w = padded_image, padded_ids, ph, pw
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        return image[y : y + ch, x : x + cw], ids[y : y + ch, x : x + cw]


class EvalTransform:
    """Evaluation sees the images as they are: PQ is computed at the ground
    truth's resolution, so nothing is resized or cropped."""

    def __call__(
        self, image: np.ndarray, ids: np.ndarray, rng: np.random.Generator | None = None
    ) -> Pair:
        return image, ids

"""Synthetic panoptic data in the COCO panoptic format.

The data of the demo, the tests and the benchmarks, so it must be learnable by
a small model on a CPU in minutes and still make the loss weights matter:

- Things: five shape classes (circle, square, triangle, cross, star), 4-16
  instances per image plus an occasional crowd, radii log-uniform from 2.5
  pixels (or 2.5% of the side) to a fifth of the side, random rotation,
  occluding each other in z-order. Colours are class-correlated but overlap
  between classes (hue spread wider than the class spacing), so shape, not
  colour, decides the class; touching instances of one class need the
  center/offset heads.
- Stuff: four textured backgrounds (sky: vertical gradient; grass: noise;
  stripes; checker) on warped Voronoi regions; stripes and checker get random
  colours, so only texture tells them apart.
- Crowd: about a third of the images hold one cluster of small shapes of one
  class labelled as a single ``iscrowd`` segment.
- Void (id 0): fragments of occluded things too small to label, a one-pixel
  unlabelled rim around some things, and sometimes a noise patch.

Category ids are not contiguous (things 1-5, stuff 11-14) on purpose: code
that uses a category id as a class index fails here, not first on COCO.

Every image is drawn from its own generator seeded by ``(seed, split, index)``,
so image ``i`` is the same whatever the number of images.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from trainer_image.data.coco_panoptic import Category, ImageId, write_split

SYNTH_CATEGORIES: list[Category] = [
    Category(1, "circle", True, (220, 20, 60), "shape"),
    Category(2, "square", True, (0, 130, 200), "shape"),
    Category(3, "triangle", True, (255, 200, 0), "shape"),
    Category(4, "cross", True, (145, 30, 180), "shape"),
    Category(5, "star", True, (60, 180, 75), "shape"),
    Category(11, "sky", False, (135, 206, 235), "background"),
    Category(12, "grass", False, (34, 139, 34), "background"),
    Category(13, "stripes", False, (170, 110, 40), "background"),
    Category(14, "checker", False, (128, 128, 128), "background"),
]

THING_IDS = tuple(c.id for c in SYNTH_CATEGORIES if c.isthing)
STUFF_IDS = tuple(c.id for c in SYNTH_CATEGORIES if not c.isthing)

# class hues 0.15-0.25 apart, spread 0.09: neighbouring classes overlap in colour
_THING_HUE = {1: 0.0, 2: 0.6, 3: 0.15, 4: 0.8, 5: 0.35}
_HUE_SPREAD = 0.09
# split tags in the seed, so train and val never share an image
_SPLIT_TAG = {"train": 0, "val": 1}
VAL_ID_OFFSET = 1_000_000  # val image ids start above it: ids are unique across splits


def parse_size(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """``"S"`` → (S, S); ``"HxW"`` → (H, W), height first like an array shape."""
    if isinstance(text, tuple):
        h, w = text
    elif isinstance(text, int):
        h = w = text
    else:
        parts = text.lower().split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"size must be S or HxW, got {text!r}") from None
        if len(values) == 1:
            h = w = values[0]
        elif len(values) == 2:
            h, w = values
        else:
            raise ValueError(f"size must be S or HxW, got {text!r}")
    if h < 16 or w < 16:
        raise ValueError(f"size must be at least 16x16, got {h}x{w}")
    return int(h), int(w)


# --------------------------------------------------------------------------- textures


def _rgb(hue: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val), dtype=np.float32)


def _smooth_noise(
    rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int], cell: float
) -> np.ndarray:
    """Value noise ~N(0, 1) on a grid of ``cell`` pixels over an image of ``shape``,
    bilinearly upsampled (by PIL, in C) and read at the pixels ``(ys, xs)``."""
    from PIL import Image

    h, w = shape
    grid = rng.standard_normal((int(h / cell) + 2, int(w / cell) + 2), dtype=np.float32)
    field = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR))
    return field[ys, xs]


def _texture(
    rng: np.random.Generator,
    category_id: int,
    ys: np.ndarray,
    xs: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """(N, 3) float colours of one stuff class at the integer pixels ``(ys, xs)``.

    Evaluated only where the class is, so the cost is one pass over the image
    whatever the number of stuff regions.
    """
    h, w = shape
    m = min(h, w)
    fy, fx = ys.astype(np.float32), xs.astype(np.float32)
    if category_id == 11:  # sky: vertical gradient, a little cloud noise
        base = _rgb(rng.uniform(0.52, 0.66), rng.uniform(0.3, 0.7), rng.uniform(0.75, 1.0))
        clouds = _smooth_noise(rng, ys, xs, shape, m / 4)
        shade = 1.0 - rng.uniform(0.2, 0.45) * (fy / h) + 0.04 * clouds
        return base * shade[:, None]
    if category_id == 12:  # grass: green with fine and coarse noise
        base = _rgb(rng.uniform(0.22, 0.38), rng.uniform(0.5, 0.9), rng.uniform(0.35, 0.7))
        fine = rng.random(ys.shape, dtype=np.float32) - 0.5  # uniform: 3x cheaper than normal
        coarse = _smooth_noise(rng, ys, xs, shape, max(2.0, m / 16))
        return base * (1.0 + 0.75 * fine + 0.12 * coarse)[:, None]
    angle = rng.uniform(0, math.pi)
    u = fx * math.cos(angle) + fy * math.sin(angle)
    v = -fx * math.sin(angle) + fy * math.cos(angle)
    colour_a = _rgb(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 1.0))
    colour_b = _rgb(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 1.0))
    if category_id == 13:  # stripes with soft edges
        period = max(3.0, rng.uniform(0.06, 0.15) * m)
        mix = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * math.pi * u / period))
    else:  # 14, checker
        cell = max(2.0, rng.uniform(0.05, 0.12) * m)
        mix = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    return colour_a * mix[:, None] + colour_b * (1 - mix[:, None])


# --------------------------------------------------------------------------- shapes


def _shape_mask(category_id: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Inside test of one shape class in its rotated local frame (u, v)."""
    if category_id == 1:  # circle
        return u * u + v * v <= r * r
    if category_id == 2:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82 * r
    if category_id == 3:  # equilateral triangle, circumradius 1.25 r
        inner = 0.625 * r
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3
            inside &= u * math.cos(a) + v * math.sin(a) <= inner
        return inside
    if category_id == 4:  # cross (plus)
        au, av = np.abs(u), np.abs(v)
        arm = 0.34 * r
        return ((au <= r) & (av <= arm)) | ((av <= r) & (au <= arm))
    # 5, star: five lobes in polar coordinates
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    return rho <= r * (0.42 + 0.58 * ((1 + np.cos(5 * phi)) / 2) ** 2)


def _paint_shape(
    rng: np.random.Generator,
    image: np.ndarray,
    owner: np.ndarray,
    group: int,
    category_id: int,
    cy: float,
    cx: float,
    r: float,
) -> None:
    """Paint one shape over ``image`` and mark its pixels as ``group`` in ``owner``."""
    h, w = owner.shape
    reach = int(math.ceil(1.3 * r)) + 1
    y0, y1 = max(0, int(cy) - reach), min(h, int(cy) + reach + 1)
    x0, x1 = max(0, int(cx) - reach), min(w, int(cx) + reach + 1)
    if y0 >= y1 or x0 >= x1:
        return
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    theta = rng.uniform(0, 2 * math.pi)
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    mask = _shape_mask(category_id, u, v, r)
    hue = _THING_HUE[category_id] + rng.normal(0, _HUE_SPREAD)
    colour = _rgb(hue, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
    # a light gradient across the shape, like lighting
    shade = 1.0 + rng.uniform(0.1, 0.3) * np.clip(u / max(r, 1.0), -1, 1)
    patch = image[y0:y1, x0:x1]
    patch[mask] = (colour * shade[..., None])[mask]
    owner[y0:y1, x0:x1][mask] = group


# --------------------------------------------------------------------------- images


def render_image(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, bool]]]:
    """One synthetic image: ``(image (H, W, 3) uint8, ids (H, W) int32, labels)``.

    ``labels`` maps every non-zero id in ``ids`` to ``(category_id, iscrowd)``.
    Segment ids are ``category_id * 1000 + k``. Pure: no I/O.
    """
    h, w = height, width
    m = min(h, w)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]

    # stuff: warped Voronoi regions, each a random stuff class
    n_sites = int(rng.integers(2, 5))
    sites = rng.uniform((0, 0), (h, w), size=(n_sites, 2)).astype(np.float32)
    amp = 0.06 * m
    wy = ys + amp * np.sin(xs * (2 * math.pi / (0.5 * m)) + rng.uniform(0, 2 * math.pi))
    wx = xs + amp * np.sin(ys * (2 * math.pi / (0.6 * m)) + rng.uniform(0, 2 * math.pi))
    region = np.zeros((h, w), dtype=np.int64)
    best = np.full((h, w), np.inf, dtype=np.float32)
    for k, (sy, sx) in enumerate(sites.tolist()):
        dist = (wy - sy) ** 2 + (wx - sx) ** 2
        closer = dist < best
        region[closer], best[closer] = k, dist[closer]
    site_class = rng.integers(0, len(STUFF_IDS), size=n_sites)  # index into STUFF_IDS
    stuff = site_class[region]
    image = np.empty((h, w, 3), dtype=np.float32)
    for k in np.unique(site_class).tolist():
        py, px = np.nonzero(stuff == k)
        image[py, px] = _texture(rng, STUFF_IDS[k], py, px, (h, w))

    # things: groups painted in z-order; group g >= 1 owns its visible pixels
    owner = np.zeros((h, w), dtype=np.int32)
    r_min, r_max = max(2.5, 0.025 * m), 0.2 * m
    n_things = int(rng.integers(4, 17))
    crowd = rng.random() < 0.35
    crowd_at = int(rng.integers(0, n_things + 1)) if crowd else -1
    groups: list[tuple[int, bool]] = []  # (category_id, iscrowd) per group
    for k in range(n_things + (1 if crowd else 0)):
        category_id = int(rng.choice(THING_IDS))
        group = len(groups) + 1
        if k == crowd_at:  # a cluster of small shapes of one class, one segment
            groups.append((category_id, True))
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            spread = rng.uniform(0.08, 0.16) * m
            for _ in range(int(rng.integers(6, 13))):
                a, d = rng.uniform(0, 2 * math.pi), spread * math.sqrt(rng.random())
                r = rng.uniform(0.6, 1.3) * r_min
                y, x = cy + d * math.sin(a), cx + d * math.cos(a)
                _paint_shape(rng, image, owner, group, category_id, y, x, r)
        else:
            groups.append((category_id, False))
            r = math.exp(rng.uniform(math.log(r_min), math.log(r_max)))
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            _paint_shape(rng, image, owner, group, category_id, cy, cx, r)

    void = np.zeros((h, w), dtype=bool)
    # an unlabelled one-pixel rim around about a quarter of the things
    sloppy = np.flatnonzero(rng.random(len(groups) + 1) < 0.25)
    sloppy = sloppy[sloppy > 0]
    if sloppy.size:
        edge = np.zeros((h, w), dtype=bool)
        edge[:, :-1] |= owner[:, :-1] != owner[:, 1:]
        edge[:, 1:] |= owner[:, :-1] != owner[:, 1:]
        edge[:-1] |= owner[:-1] != owner[1:]
        edge[1:] |= owner[:-1] != owner[1:]
        is_sloppy = np.zeros(len(groups) + 1, dtype=bool)
        is_sloppy[sloppy] = True
        void |= edge & is_sloppy[owner]
    # sometimes an unlabelled patch of noise
    if rng.random() < 0.3:
        ph, pw = (int(rng.uniform(0.06, 0.14) * m) + 2 for _ in range(2))
        py, px = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        image[py : py + ph, px : px + pw] = rng.random((ph, pw, 3), dtype=np.float32)
        void[py : py + ph, px : px + pw] = True

    # one slot per pixel: 0 void, g for thing group g, n_groups + 1 + k for stuff k
    n_groups = len(groups)
    slot = np.where(owner > 0, owner, n_groups + 1 + stuff)
    slot[void] = 0
    # thing fragments too small to label become void
    area = np.bincount(slot.ravel(), minlength=n_groups + 1 + len(STUFF_IDS))
    min_area = max(4, (h * w) // 4000)
    tiny = area < min_area
    tiny[0] = False
    tiny[n_groups + 1 :] = False  # stuff keeps even a few pixels, as in COCO
    slot[tiny[slot]] = 0
    area[tiny] = 0

    # segment ids: category * 1000 + k, through a lookup table over slots
    slot_ids = np.zeros(len(area), dtype=np.int32)
    labels: dict[int, tuple[int, bool]] = {}
    per_class: dict[int, int] = {}
    slot_labels = [*groups, *((cid, False) for cid in STUFF_IDS)]
    for s, (category_id, iscrowd) in enumerate(slot_labels, start=1):
        if area[s] > 0:
            per_class[category_id] = per_class.get(category_id, 0) + 1
            sid = category_id * 1000 + per_class[category_id]
            slot_ids[s] = sid
            labels[sid] = (category_id, iscrowd)
    ids = slot_ids[slot]

    # sensor noise; uniform with the std of N(0, 0.025), 3x cheaper to draw
    image += 0.0866 * (rng.random(image.shape, dtype=np.float32) - 0.5)
    pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return pixels, ids, labels


def _items(
    split: str, count: int, size: tuple[int, int], seed: int, first_id: int, progress: bool
) -> Iterator[tuple[ImageId, np.ndarray, np.ndarray, dict[int, tuple[int, bool]]]]:
    from tqdm import tqdm

    bar = tqdm(total=count, desc=f"synth {split}", unit="img", disable=not progress)
    with bar:
        for index in range(count):
            rng = np.random.default_rng([seed, _SPLIT_TAG[split], index])
            image, ids, labels = render_image(rng, *size)
            yield first_id + index, image, ids, labels
            bar.update()


def synthesize(
    out_dir: str | Path,
    images: int,
    size: int | str | tuple[int, int],
    seed: int,
    val_images: int | None = None,
    progress: bool | None = None,
) -> None:
    """Write splits ``train`` (``images``) and ``val`` (``val_images``, default
    ``max(1, images // 4)``) under ``out_dir`` in the ``PanopticSplit.from_dir``
    layout. ``size`` is S (square) or (H, W) or ``"HxW"``. Train ids are
    1..images, val ids ``VAL_ID_OFFSET + 1``...; ``progress`` shows a tqdm bar
    (default: for 100 images or more).
    """
    if images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    val_images = max(1, images // 4) if val_images is None else val_images
    if val_images < 0:
        raise ValueError(f"val_images must not be negative, got {val_images}")
    hw = parse_size(size)
    if progress is None:
        progress = images + val_images >= 100
    for split, count, first_id in (("train", images, 1), ("val", val_images, VAL_ID_OFFSET + 1)):
        items = _items(split, count, hw, seed, first_id, progress)
        write_split(out_dir, split, SYNTH_CATEGORIES, items)

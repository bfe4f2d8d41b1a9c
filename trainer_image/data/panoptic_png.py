"""The COCO panoptic PNG encoding: segment id = R + 256·G + 256²·B.

Decoding is on the hot path of PQ evaluation from files, so it uses libspng
(``pyspng``) when present, which decodes faster than PIL, and falls back to PIL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

try:  # optional fast decoder
    import pyspng
except ImportError:  # pragma: no cover - exercised only without pyspng
    pyspng = None


class PanopticPngError(ValueError):
    """A panoptic PNG is missing, unreadable or not RGB."""


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W) int32 segment ids."""
    rgb = rgb.astype(np.int32, copy=False)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) integer segment ids → (H, W, 3) uint8 colours."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError("panoptic segment ids must lie in [0, 256**3)")
    rgb = np.empty((*ids.shape, 3), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = (ids // 256) % 256
    rgb[..., 2] = ids // 65536
    return rgb


def decode_rgb(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """PNG bytes → (H, W, 3) uint8; a clear error naming ``name`` otherwise."""
    try:
        if pyspng is not None:
            rgb = pyspng.load(data)
        else:
            import io

            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                rgb = np.asarray(img.convert("RGB"))
    except Exception as exc:  # decoders raise assorted types
        raise PanopticPngError(f"{name}: not a readable PNG ({exc})") from exc
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise PanopticPngError(f"{name}: panoptic PNG must be RGB, got shape {rgb.shape}")
    return rgb[..., :3]


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Read a panoptic PNG file as (H, W) int32 segment ids."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PanopticPngError(f"{path}: panoptic PNG does not exist") from None
    return rgb2id(decode_rgb(data, str(path)))


def write_panoptic_png(path: str | Path, ids: np.ndarray) -> None:
    """Write (H, W) segment ids as a panoptic PNG."""
    from PIL import Image

    Image.fromarray(id2rgb(ids)).save(path, format="PNG")

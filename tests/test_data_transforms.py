"""Augmentation keeps image and segment ids consistent; ids are never interpolated."""

from __future__ import annotations

import numpy as np
import pytest

from trainer_image.data.panoptic_png import id2rgb
from trainer_image.data.transforms import EvalTransform, TrainTransform, resize_pair


def _pair(h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Blocky ids whose image encodes them: image == id2rgb(ids) exactly."""
    ids = np.zeros((h, w), dtype=np.int32)
    ids[:, : w // 2] = 1001
    ids[h // 3 :, w // 4 :] = 2002
    ids[: h // 4, 3 * w // 4 :] = 5  # stays void-free: 0 only appears by padding
    ids[h // 2 :, : w // 4] = 70000
    return id2rgb(ids), ids


def test_nearest_resize_by_hand() -> None:
    ids = np.array([[1, 2], [3, 4]], dtype=np.int32)
    image = id2rgb(ids)
    _, up = resize_pair(image, ids, 4, 6)
    np.testing.assert_array_equal(
        up,
        [[1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2], [3, 3, 3, 4, 4, 4], [3, 3, 3, 4, 4, 4]],
    )
    ids3 = np.arange(9, dtype=np.int32).reshape(3, 3)
    _, down = resize_pair(id2rgb(ids3), ids3, 1, 1)
    np.testing.assert_array_equal(down, [[4]])  # the centre pixel


def test_flip_moves_image_and_ids_together() -> None:
    image, ids = _pair()
    transform = TrainTransform(scale_range=(1.0, 1.0), flip=True)
    flips = 0
    for seed in range(8):
        out_image, out_ids = transform(image, ids, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_image, id2rgb(out_ids))
        flipped = np.array_equal(out_ids, ids[:, ::-1])
        assert flipped or np.array_equal(out_ids, ids)
        flips += flipped
    assert 0 < flips < 8


def test_crop_moves_image_and_ids_together() -> None:
    image, ids = _pair()
    transform = TrainTransform(scale_range=(1.0, 1.0), crop_size=(10, 12), flip=False)
    out_image, out_ids = transform(image, ids, np.random.default_rng(0))
    assert out_ids.shape == (10, 12) and out_image.shape == (10, 12, 3)
    np.testing.assert_array_equal(out_image, id2rgb(out_ids))
    # the crop is a window of the original
    windows = {
        (y, x)
        for y in range(24 - 10 + 1)
        for x in range(32 - 12 + 1)
        if np.array_equal(ids[y : y + 10, x : x + 12], out_ids)
    }
    assert windows


def test_scale_keeps_ids_exact_and_colours_consistent() -> None:
    image, ids = _pair()
    transform = TrainTransform(scale_range=(0.6, 1.6), crop_size=20)
    for seed in range(10):
        out_image, out_ids = transform(image, ids, np.random.default_rng(seed))
        assert out_ids.shape == (20, 20) and out_ids.dtype == ids.dtype
        # nearest neighbour: no new ids (0 only from padding)
        assert set(np.unique(out_ids).tolist()) <= {0, 5, 1001, 2002, 70000}
        # away from boundaries the bilinear image still shows its id's colour
        inner = np.ones_like(out_ids, dtype=bool)
        for dy in (-2, -1, 0, 1, 2):
            for dx in (-2, -1, 0, 1, 2):
                inner[2:-2, 2:-2] &= (
                    np.roll(out_ids, (dy, dx), axis=(0, 1))[2:-2, 2:-2] == out_ids[2:-2, 2:-2]
                )
        inner[:2] = inner[-2:] = False
        inner[:, :2] = inner[:, -2:] = False
        inner &= out_ids != 0
        assert inner.sum() > 50
        np.testing.assert_array_equal(out_image[inner], id2rgb(out_ids)[inner])


def test_padding_is_void_with_the_fill_colour() -> None:
    image, ids = _pair(8, 8)
    transform = TrainTransform(scale_range=(1.0, 1.0), crop_size=12, flip=False, fill=(9, 8, 7))
    out_image, out_ids = transform(image, ids, np.random.default_rng(0))
    np.testing.assert_array_equal(out_ids[:8, :8], ids)
    assert (out_ids[8:] == 0).all() and (out_ids[:, 8:] == 0).all()
    assert (out_image[8:] == (9, 8, 7)).all() and (out_image[:, 8:] == (9, 8, 7)).all()


def test_own_seed_without_rng_is_reproducible() -> None:
    image, ids = _pair()
    t1, t2 = TrainTransform(crop_size=16, seed=4), TrainTransform(crop_size=16, seed=4)
    outputs = [t1(image, ids)[1] for _ in range(4)]
    for out in outputs:
        np.testing.assert_array_equal(out, t2(image, ids)[1])
    # successive calls draw new augmentations
    assert any(not np.array_equal(outputs[0], out) for out in outputs[1:])


def test_eval_transform_is_identity() -> None:
    image, ids = _pair()
    out_image, out_ids = EvalTransform()(image, ids)
    assert out_image is image and out_ids is ids


@pytest.mark.parametrize(
    "kwargs", [{"scale_range": (0.0, 1.0)}, {"scale_range": (2.0, 1.0)}, {"crop_size": 0}]
)
def test_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TrainTransform(**kwargs)

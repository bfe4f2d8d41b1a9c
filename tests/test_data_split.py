"""The proxy split: deterministic, disjoint, complete, by fraction or count."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from trainer_image.data.coco_panoptic import PanopticSplit, write_split
from trainer_image.data.split import parse_proxy_val, proxy_split, proxy_val_count
from trainer_image.data.synth import SYNTH_CATEGORIES, render_image


def _ids(split: PanopticSplit) -> list:
    return [r.image_id for r in split.records]


@pytest.mark.parametrize(("proxy_val", "expected"), [(0.25, 6), (0.1, 2), (5, 5), (1, 1)])
def test_disjoint_complete_and_sized(
    synth_train: PanopticSplit, proxy_val: float | int, expected: int
) -> None:
    train, val = proxy_split(synth_train, proxy_val, seed=0)
    assert len(val) == expected and len(train) == 24 - expected
    assert not set(_ids(train)) & set(_ids(val))
    assert sorted(_ids(train) + _ids(val)) == _ids(synth_train)
    # both halves keep the split's order and its categories
    assert _ids(train) == sorted(_ids(train)) and _ids(val) == sorted(_ids(val))
    assert val.categories == synth_train.categories


def test_deterministic_and_seeded(synth_train: PanopticSplit) -> None:
    first = _ids(proxy_split(synth_train, 0.25, seed=3)[1])
    assert first == _ids(proxy_split(synth_train, 0.25, seed=3)[1])
    assert first != _ids(proxy_split(synth_train, 0.25, seed=4)[1])


def test_independent_of_record_order(synth_train: PanopticSplit) -> None:
    shuffled = PanopticSplit(
        synth_train.categories,
        list(reversed(synth_train.records)),
        synth_train.png_dir,
        synth_train.image_dir,
    )
    assert set(_ids(proxy_split(shuffled, 7, seed=1)[1])) == set(
        _ids(proxy_split(synth_train, 7, seed=1)[1])
    )


def test_fraction_rounds_and_keeps_both_sides() -> None:
    assert proxy_val_count(10, 0.01) == 1  # never empty
    assert proxy_val_count(10, 0.99) == 9  # never everything
    assert proxy_val_count(118287, 0.1) == 11829


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5, 0, 24, -1, True, "0.1"])
def test_rejects_bad_values(synth_train: PanopticSplit, bad) -> None:
    with pytest.raises(ValueError, match="proxy_val"):
        proxy_split(synth_train, bad)


def test_needs_two_images(synth_train: PanopticSplit) -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        proxy_split(synth_train.subset([1]), 0.5)


def test_string_image_ids(tmp_path: Path) -> None:
    items = []
    for i in range(6):
        image, ids, labels = render_image(np.random.default_rng(i), 16, 16)
        items.append((f"img_{i}", image, ids, labels))
    write_split(tmp_path, "train", SYNTH_CATEGORIES, items)
    split = PanopticSplit.from_dir(tmp_path, "train")
    train, val = proxy_split(split, 2, seed=0)
    assert len(val) == 2 and set(_ids(train)) | set(_ids(val)) == {f"img_{i}" for i in range(6)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.1", 0.1), ("1e-1", 0.1), (" 0.5 ", 0.5), ("0.999", 0.999), ("1", 1), ("500", 500)],
)
def test_parse_proxy_val_fraction_or_count(text: str, expected: float | int) -> None:
    value = parse_proxy_val(text)
    assert value == expected and type(value) is type(expected)  # the type carries the meaning


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.0", "neither a fraction in (0, 1) nor a whole number"),
        ("500.0", "write a count without a decimal point"),
        ("1e3", "neither a fraction"),
        ("0.0", "neither a fraction"),
        ("-0.5", "neither a fraction"),
        ("nan", "neither a fraction"),
        ("0", "as a count must be at least 1"),
        ("-3", "as a count must be at least 1"),
        ("ten", "must be a fraction in (0, 1) such as 0.1 or a whole number"),
    ],
)
def test_parse_proxy_val_refuses_what_it_would_have_to_guess(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_proxy_val(text)

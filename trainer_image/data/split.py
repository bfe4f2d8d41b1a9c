"""The paper's proxy split: part of a training set held out as validation.

Ada-Segment rewards each population member by PQ on a proxy validation split
carved from the training set (10k COCO train images in the paper), so the real
validation set never steers the search. The split depends only on the set of
image ids and the seed: not on the JSON's order, not on the machine.
"""

from __future__ import annotations

import numpy as np

from trainer_image.data.coco_panoptic import ImageId, PanopticSplit


def parse_proxy_val(text: str) -> float | int:
    """A ``--proxy-val`` flag as :func:`proxy_split` takes it: ``"0.1"`` (or ``"1e-1"``) is a
    fraction in (0, 1), ``"500"`` a number of images.

    The type carries the meaning (float fraction, int count), so the text must say which it
    is: ``"1.0"`` or ``"500.0"`` is refused rather than guessed, since "all of it" and "one
    image" are both plausible readings of ``1.0``. The one parser of every CLI.
    """
    stripped = text.strip()
    try:
        count = int(stripped)
    except ValueError:
        pass
    else:
        if count < 1:
            raise ValueError(f"--proxy-val as a count must be at least 1, got {text!r}")
        return count
    try:
        fraction = float(stripped)
    except ValueError:
        raise ValueError(
            f"--proxy-val must be a fraction in (0, 1) such as 0.1 or a whole number of "
            f"images such as 500, got {text!r}"
        ) from None
    if not 0.0 < fraction < 1.0:  # also NaN and inf
        raise ValueError(
            f"--proxy-val {text!r} is neither a fraction in (0, 1) nor a whole number of "
            "images: write a count without a decimal point (e.g. 1 or 500)"
        )
    return fraction


def proxy_val_count(n_images: int, proxy_val: float | int) -> int:
    """How many of ``n_images`` go to proxy-val: a fraction in (0, 1) (rounded,
    at least 1) or a count; both sides must keep at least one image."""
    if isinstance(proxy_val, bool) or not isinstance(proxy_val, int | float):
        raise ValueError(f"proxy_val must be a fraction or a count, got {proxy_val!r}")
    if n_images < 2:
        raise ValueError(f"a proxy split needs at least 2 images, the split has {n_images}")
    if isinstance(proxy_val, float):
        if not 0.0 < proxy_val < 1.0:
            raise ValueError(f"proxy_val as a fraction must lie in (0, 1), got {proxy_val}")
        return min(n_images - 1, max(1, round(proxy_val * n_images)))
    if not 1 <= proxy_val <= n_images - 1:
        raise ValueError(
            f"proxy_val as a count must lie in [1, {n_images - 1}] for {n_images} images, "
            f"got {proxy_val}"
        )
    return proxy_val


def _canonical_order(image_ids: list[ImageId]) -> list[ImageId]:
    # ints and strs never compare with each other: the type name goes first
    return sorted(image_ids, key=lambda i: (type(i).__name__, i))


def proxy_split(
    split: PanopticSplit, proxy_val: float | int, seed: int = 0
) -> tuple[PanopticSplit, PanopticSplit]:
    """``(proxy_train, proxy_val)``: disjoint, together the whole split,
    deterministic in ``(image ids, proxy_val, seed)``.

    ``proxy_val`` is a fraction in (0, 1) (a ``float``) or an image count (an
    ``int``). Both halves keep the records in the split's order.
    """
    ids = _canonical_order([r.image_id for r in split.records])
    count = proxy_val_count(len(ids), proxy_val)
    order = np.random.default_rng(seed).permutation(len(ids))
    val_ids = {ids[i] for i in order[:count].tolist()}
    train_ids = [i for i in ids if i not in val_ids]
    return split.subset(train_ids), split.subset(val_ids)

"""The default model on real data: the COCO sample trains one step, and a few
hundred steps on synthetic data raise PQ well above the untrained model's."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from trainer_image.data.coco_panoptic import PanopticSplit
from trainer_image.data.loader import make_loader
from trainer_image.data.synth import synthesize
from trainer_image.eval.pq import PQEvaluator
from trainer_image.models import PanopticDeepLab, build_model


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Training on 2 cores that other processes share: one intra-op thread
    avoids oversubscription, which otherwise makes small convolutions many
    times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_coco_sample_builds_targets_trains_one_step_and_predicts(
    coco_sample: PanopticSplit, one_thread: None
) -> None:
    torch.manual_seed(0)
    model = build_model("panoptic_deeplab", coco_sample.categories)
    assert len(model.categories) == 133
    loader = make_loader(
        coco_sample, batch_size=2, train=True, target_builder=model.target_builder(), crop_size=192
    )
    batch = next(iter(loader))
    semantic = batch["semantic"]
    labelled = semantic[semantic != 255]
    assert labelled.numel() > 0 and labelled.max() < 133
    assert batch["center"].shape == (2, 1, 192, 192)
    assert batch["center"].amax() == pytest.approx(1.0)  # COCO crops hold instances
    assert batch["offset_weights"].sum() > 0

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    losses = model(batch)
    assert all(torch.isfinite(v) and v.item() >= 0 for v in losses.values())
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    (sample,) = itertools.islice(make_loader(coco_sample, batch_size=1, train=False), 1)
    (prediction,) = model.predict(sample["image"])
    assert prediction.ids.shape == sample["panoptic"].shape[-2:]
    coco_ids = {c.id for c in coco_sample.categories}
    assert all(s["category_id"] in coco_ids for s in prediction.segments)


def _panoptic_quality(model: PanopticDeepLab, split: PanopticSplit) -> dict[str, float]:
    evaluator = PQEvaluator(split.categories)
    for batch in make_loader(split, batch_size=16, train=False):
        predictions = model.predict(batch["image"])
        for prediction, gt_ids, image_id in zip(
            predictions, batch["panoptic"], batch["image_id"], strict=True
        ):
            gt_segments = split.record(image_id).segments
            evaluator.add(prediction.ids, prediction.segments, gt_ids, gt_segments, image_id)
    result = evaluator.result()
    return {group: result[group]["pq"] for group in ("All", "Things", "Stuff")}


@pytest.mark.slow
def test_a_few_hundred_steps_raise_pq_well_above_the_untrained_model(
    tmp_path: Path, one_thread: None
) -> None:
    synthesize(tmp_path, images=128, size=64, seed=0, val_images=32, progress=False)
    train = PanopticSplit.from_dir(tmp_path, "train")
    val = PanopticSplit.from_dir(tmp_path, "val")
    torch.manual_seed(0)
    model = build_model("panoptic_deeplab", train.categories)  # the default, tiny
    untrained = _panoptic_quality(model, val)

    # Three epochs of augmented batches, cycled: the loader's cost stays out of the loop.
    loader = make_loader(train, batch_size=8, train=True, target_builder=model.target_builder())
    batches = [batch for _ in range(3) for batch in loader]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for batch in itertools.islice(itertools.cycle(batches), 400):
        losses = model(batch)  # equal weights
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    trained = _panoptic_quality(model, val)

    # Untrained PQ is ~0.003; 400 steps reach 0.10-0.13 on the held-out images with
    # seeds 0-2 (300 steps: 0.04-0.09, stuff is learnt last under equal weights).
    assert trained["All"] > untrained["All"] + 0.05, (untrained, trained)
    assert trained["Things"] > untrained["Things"] + 0.03, (untrained, trained)
